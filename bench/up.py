"""What the benchmarks that need a running hutch share: a free port, and `hutch up` in a
directory of its own, waited for until its node is ready and stopped after."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from hutch.images.busybox import build_busybox_rootfs

HUTCH = str(Path(sys.executable).parent / "hutch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hutch_env(work: Path) -> dict[str, str]:
    """The environment of a hutch of its own under `work` (its state, contexts, no config file,
    not the caller's URL or token), with the busybox image imported there, public."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HUTCH_URL", "HUTCH_TOKEN")},
        "HUTCH_STATE_DIR": str(work / "state"),
        "HUTCH_CLIENT_CONFIG": str(work / "contexts.toml"),
        "HUTCH_CONFIG": str(work / "none.toml"),
    }
    rootfs = build_busybox_rootfs(work / "rootfs")
    subprocess.run([HUTCH, "image", "import", str(rootfs), "--name", "busybox", "--public"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    return env


def node_ready(url: str, token_file: Path) -> bool:
    """The controller answers and its node is ready."""
    try:
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        nodes = httpx.get(f"{url}/v1/nodes", headers=headers, timeout=2).json()["items"]
    except (OSError, httpx.HTTPError, ValueError, KeyError):
        return False
    return any(n["state"] == "ready" for n in nodes)


@contextlib.contextmanager
def hutch_up(env: dict[str, str], timeout: float = 120) -> Iterator[tuple[str, str]]:
    """`hutch up` with `env` (its HUTCH_STATE_DIR set): (its URL, the admin token)."""
    state = Path(env["HUTCH_STATE_DIR"])
    url = f"http://127.0.0.1:{free_port()}"
    log = state.parent / "up.log"  # what it said, for when it does not come up
    with log.open("wb") as out:
        up = subprocess.Popen([HUTCH, "up", "--port", url.rsplit(":", 1)[1]], env=env,
                              stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not node_ready(url, state / "admin-token"):
            if up.poll() is not None or time.monotonic() > deadline:
                said = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError("hutch up did not come up; it said:\n" + "\n".join(said))
            time.sleep(0.1)
        yield url, (state / "admin-token").read_text().strip()
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
