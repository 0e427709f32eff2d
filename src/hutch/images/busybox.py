"""A minimal root file system from the host's busybox-static, built locally at set-up time.

It is the first workload of `make up`, the root of the test suite's sandboxes and of the
benchmarks: no registry and no download needed.
"""

import os
import shutil
import subprocess
from pathlib import Path

from hutch.model.errors import Unavailable

BUSYBOX = Path("/bin/busybox")


def build_busybox_rootfs(dest: Path) -> Path:
    """Populate `dest`: busybox and its applets in /bin, users root, app (1000) and nobody."""
    if not BUSYBOX.exists():
        raise Unavailable("busybox is not installed: apt-get install busybox-static")
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root", "home/app"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = dest / "bin" / applet
        if applet != "busybox" and not link.is_symlink():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (dest / "etc" / "group").write_text(
        "root:x:0:\napp:x:1000:\nextra:x:2000:app\nnogroup:x:65534:\n"
    )
    os.chown(dest / "home" / "app", 1000, 1000)
    return dest


if __name__ == "__main__":  # python -m hutch.images.busybox ROOT [ARCHIVE] (used by `make up`)
    import sys

    from hutch.images.build import write_archive

    root = build_busybox_rootfs(Path(sys.argv[1]))
    if len(sys.argv) > 2:
        with open(sys.argv[2], "wb") as out:
            write_archive(root, out, name="busybox:latest")
