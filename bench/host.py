"""What the benchmarks that run QEMU and crun directly share: a static probe built here, the
run's cgroup parent removed, progress on stderr."""

import contextlib
import subprocess
import sys
from pathlib import Path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_static(source: Path, binary: Path) -> Path:
    """`source` (C) compiled static to `binary`: the guest's busybox root has no libc."""
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(source)],
        check=True,
    )
    return binary


def remove_parent(parent: str) -> None:
    """The run's cgroup parent, once the groups in it are gone: in every hierarchy, not only
    hutch's controllers' (crun makes the containers' groups in all that are mounted)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[:1] in (["cgroup"], ["cgroup2"]):
            with contextlib.suppress(OSError):
                (Path(before.split()[4]) / parent).rmdir()
