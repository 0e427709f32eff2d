"""Sandbox specs and drivers for the runtime tests, built through the agent layer from settings
(as hutch does); the fixtures that open them are in tests/runtime/conftest.py."""

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from hutch import config
from hutch.agent.runtimes import open_driver
from hutch.images.rootfs import PreparedRoot
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec, Stream, User
from hutch.runtime.driver import SandboxDriver
from hutch.runtime.state import SandboxRecord
from tests.helpers import CACHE_DIR

PATH = "PATH=/bin"
LOG_BOUND = 256 << 10
CONSOLE_BOUND = 64 << 10


def settings_for(state_dir: Path) -> config.Settings:
    return config.load(
        state_dir=state_dir,
        cache_dir=CACHE_DIR,
        log_max_bytes=LOG_BOUND,
        console_max_bytes=CONSOLE_BOUND,
    )


def make_spec(
    root: PreparedRoot,
    *args: str,
    sandbox_id: str = "sb",
    env: tuple[str, ...] = (),
    cwd: str = "/",
    user: User | None = None,
    memory: int = 128,
    stdin: bool = False,
) -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id,
        process=ProcessSpec(args=args, env=(PATH, *env), cwd=cwd, user=user or User(), stdin=stdin),
        rootfs=str(root.rootfs),
        root_disk=str(root.disk),
        resources=Resources(memory_mib=memory),
    )


def status_fields(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def spawn_elsewhere(runtime: str, state_dir: Path, spec: SandboxSpec) -> subprocess.Popen[bytes]:
    """Another hutch process (spawn_sandbox.py) that creates and starts `spec` under
    `state_dir`; returns once its workload printed "tick 3"."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.spawn_sandbox", runtime, str(state_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert child.stdin and child.stdout
    child.stdin.write(json.dumps(SandboxRecord(spec=spec, runtime="").to_json()["spec"]).encode())
    child.stdin.close()
    assert child.stdout.readline().strip() == b"started"
    return child


def kill(child: subprocess.Popen[bytes]) -> None:
    """As a crashing host process dies: at once, its sandboxes left running."""
    child.kill()
    child.wait()


async def output(driver: SandboxDriver, sandbox_id: str) -> tuple[bytes, bytes]:
    out, err = bytearray(), bytearray()
    async for record in driver.logs(sandbox_id, follow=True):
        (out if record.stream is Stream.STDOUT else err).extend(record.data)
    return bytes(out), bytes(err)


async def wait_for_line(driver: SandboxDriver, sandbox_id: str, line: bytes) -> None:
    async for record in driver.logs(sandbox_id, follow=True):
        if line in record.data:
            return
    info = await driver.inspect(sandbox_id)  # why: a guest that did not boot says so here
    raise AssertionError(f"{line!r} never appeared; the sandbox is {info.state}: {info.exit}")


async def driver_in(
    state_dir: Path, runtime: str, **settings: object
) -> AsyncIterator[SandboxDriver]:
    """A driver for the test (with `settings` over the tests' own); afterwards every sandbox it
    left is destroyed."""
    driver = open_driver(settings_for(state_dir).model_copy(update=settings), runtime)
    yield driver
    for info in await driver.sandboxes():
        await driver.destroy(info.id, force=True)
    await driver.close()
