"""The agent's image settings reach the roots it prepares."""

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hutch import config
from hutch.agent.images import roots_for
from hutch.images.staging import Staging
from tests.images.ocibuild import write_oci_layout


def test_roots_unpack_in_the_configured_staging_directory(tmp_path: Path) -> None:
    settings = config.load(state_dir=tmp_path / "state", unpack_staging=tmp_path / "shm")
    assert roots_for(settings).staging == Staging.memory_share(tmp_path / "shm", 0.25)
    assert roots_for(config.load(state_dir=tmp_path / "s2", unpack_staging=None)).staging is None


EROFS_MAGIC = bytes.fromhex("e2e1f5e0")  # 0xE0F5E1E2, little-endian, at offset 1024

# Prepares micro-VM roots of the images named in argv in threads, as the agent does: says it is
# ready, waits for a line on stdin (so that every process starts at once), then prints
# {image: disk or error}.
PREPARE = """
import json, logging, sys, threading
from hutch import config
from hutch.agent.images import roots_for
from hutch.model.sandbox import Capabilities

logging.basicConfig(level=logging.INFO)
caps = Capabilities(runtime="microvm", isolation="vm", root="disk", exec=True, signals=True,
                    accel="tcg", min_memory_mib=96, max_cpus=1, max_memory_mib=512,
                    overhead_mib=96)
roots = roots_for(config.load())
results = {}

def prepare(source):
    try:
        results[source] = str(roots.prepare(source, caps).disk)
    except Exception as e:
        results[source] = repr(e)

print("ready", flush=True)
sys.stdin.readline()
threads = [threading.Thread(target=prepare, args=(s,)) for s in sys.argv[1:]]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def image_of(where: Path, seed: int, mib: int) -> Path:
    """An image of `mib` files of 1 MiB that compress well (so their layer is small)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(mib):
            data = (f"{seed}-{i}-".encode() * (1 << 17))[: 1 << 20]
            info = tarfile.TarInfo(f"data/f{i}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    write_oci_layout(where, [buf.getvalue()], {"Cmd": ["/bin/sh"]})
    return where


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_concurrent_preparations_share_a_small_staging_tmpfs(short_dir: Path) -> None:
    # Eight images of 20 MiB, prepared at once by four processes of two threads, through a
    # 48 MiB tmpfs: at most two fit there at a time, so the others must go to the cache's disk
    # rather than fail with ENOSPC.
    shm = short_dir / "shm"
    shm.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=1777", "hutch-test", str(shm)],
                   check=True)  # fmt: skip
    try:
        images = [str(image_of(short_dir / f"image{i}", i, 40)) for i in range(8)]
        env = {**os.environ, "HUTCH_STATE_DIR": str(short_dir / "state"),
               "HUTCH_CACHE_DIR": str(short_dir / "cache"), "HUTCH_UNPACK_STAGING": str(shm),
               "HUTCH_CONFIG": str(short_dir / "none.toml")}  # fmt: skip
        procs = [
            subprocess.Popen([sys.executable, "-c", PREPARE, *images[i : i + 2]], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for i in range(0, 8, 2)
        ]  # fmt: skip
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=120) for proc in procs]
        results = {k: v for out, _ in outputs for k, v in json.loads(out).items()}
        assert sorted(results) == sorted(images)
        for disk in results.values():
            assert disk.endswith(".erofs"), results
            assert Path(disk).read_bytes()[1024:1028] == EROFS_MAGIC
        logs = "".join(err for _, err in outputs)
        assert "on the cache's disk" in logs  # some did not fit; they were done on disk
        # The staging holds nothing more, and its own mode is as it was (/dev/shm is everyone's).
        area = shm / f".hutch-{os.geteuid()}"
        assert [p.name for p in area.iterdir()] == ["ledger.lock"]
        assert stat.S_IMODE(shm.stat().st_mode) == 0o1777
    finally:
        subprocess.run(["umount", str(shm)], check=True)
