"""`hutch up -d` and `hutch down`: what `make up` does, from an empty data directory."""

import json
import socket
import stat
from pathlib import Path

from tests.cli.conftest import Hutch, one_clear_line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_detached_then_a_first_workload_then_down(
    hutch: Hutch, short_dir: Path, busybox_rootfs: Path
) -> None:
    data = short_dir / "data"
    port = str(free_port())
    up = hutch("up", "-d", "--data-dir", str(data), "--port", port)
    assert up.returncode == 0, up.stderr + (data / "hutch.log").read_text()
    assert f"API at http://127.0.0.1:{port}" in up.stdout
    assert stat.S_IMODE((data / "admin-token").stat().st_mode) == 0o600
    try:
        again = hutch("up", "-d", "--data-dir", str(data), "--port", port)
        assert again.returncode == 0 and "already up" in again.stdout
        # The saved `local` context makes the next commands talk to it.
        imported = hutch("image", "import", str(busybox_rootfs), "--name", "busybox", "--public")
        assert imported.returncode == 0 and imported.stdout.startswith("sha256:"), imported.stderr
        run = hutch("run", "--rm", "busybox", "--", "echo", "hello")  # in a micro-VM
        assert (run.returncode, run.stdout) == (0, "hello\n"), run.stderr
        [machine] = json.loads(hutch("ps", "-a", "-o", "json").stdout)
        assert (machine["runtime"], machine["state"]) == ("microvm", "destroyed")  # --rm
    finally:
        down = hutch("down", "--data-dir", str(data))
    assert (down.returncode, down.stdout) == (0, "hutch is down\n"), down.stderr
    gone = hutch("ps")
    assert gone.returncode == 125 and "cannot be reached" in one_clear_line(gone.stderr)
    twice = hutch("down", "--data-dir", str(data))
    assert twice.returncode == 125 and "no hutch up -d running" in one_clear_line(twice.stderr)
