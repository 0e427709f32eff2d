"""A real `hutch up` for tests: controller, node agent, micro-VMs and containers on this host.

`controller` is a session fixture: import it into a conftest or test module. Every module that
imports it shares one `hutch up` process (started on first use, stopped when the last user is
torn down), so tests isolate themselves with projects of their own (`new_project`), not with
controllers of their own. A test that needs a `hutch up` of its own (other settings) gets one
from `running_controller`, in a network namespace of its own: one node agent per namespace.
"""

import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hutch.client import Client
from hutch.model.errors import HutchError
from hutch.storage.local import unmount_pool
from hutch.wire.tenancy import ProjectView
from tests.helpers import free_port
from tests.helpers.cli import Hutch, isolated_env
from tests.helpers.netns import own_network_namespace
from tests.images.ocibuild import write_oci_layout
from tests.images.registry_server import Registry

START_TIMEOUT = 60.0
BUSYBOX_CONFIG = {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}


@dataclass(frozen=True)
class Controller:
    url: str
    token: str  # a system admin token
    env: dict[str, str]  # for the `hutch` CLI: HUTCH_CLIENT_CONFIG has its `local` context
    state_dir: Path
    registry_port: int  # the node pulls from 127.0.0.1:registry_port over plain HTTP
    # localhost:rebind_port is in registry_allow but not configured: a name that resolves to
    # loopback, as DNS rebinding would make a public one; the node must not connect there.
    rebind_port: int = 0

    def client(self, project: str | None = "default", token: str | None = None) -> Client:
        return Client(self.url, token or self.token, project=project)

    def log(self) -> str:
        return (self.state_dir / "up.log").read_text(errors="replace")[-4000:]


def _env(state_dir: Path, registry_port: int, rebind_port: int) -> dict[str, str]:
    return isolated_env(
        state_dir,
        state_dir,
        HUTCH_REGISTRIES=json.dumps({f"127.0.0.1:{registry_port}": {"insecure": True}}),
        HUTCH_REGISTRY_ALLOW=json.dumps(["docker.io", f"localhost:{rebind_port}"]),
        HUTCH_SAMPLE_INTERVAL="1",  # the tests' machines show their use within seconds
    )


def _ready(url: str, token_file: Path) -> bool:
    with contextlib.suppress(httpx.HTTPError, OSError):
        if httpx.get(url + "/healthz", timeout=1).status_code != 200:
            return False
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        nodes = httpx.get(url + "/v1/nodes", headers=headers, timeout=2).json()["items"]
        return any(n["state"] == "ready" for n in nodes)
    return False


@contextlib.contextmanager
def running_controller(
    busybox_rootfs: Path, up_env: dict[str, str] | None = None, *, shared: bool = False
) -> Iterator[Controller]:
    """`hutch up` in a fresh state directory, with busybox:latest (public) in the node's store;
    on exit, every machine left is destroyed, then hutch is stopped and its sandboxes swept.
    `up_env`: settings for `hutch up` only. Unless it is the `shared` one, it runs (and the
    caller's thread is, for the block) in a network namespace of its own: the shared one's
    agent manages the session's."""
    with contextlib.ExitStack() as stack:
        if not shared:
            stack.enter_context(own_network_namespace())
        yield stack.enter_context(_running_controller(busybox_rootfs, up_env))


@contextlib.contextmanager
def _running_controller(
    busybox_rootfs: Path, up_env: dict[str, str] | None
) -> Iterator[Controller]:
    state_dir = Path(tempfile.mkdtemp(prefix="h", dir="/tmp"))  # unix sockets: short paths
    registry_port, rebind_port = free_port(), free_port()
    env = _env(state_dir, registry_port, rebind_port)
    layout = state_dir / "busybox-layout"
    write_oci_layout(layout, [busybox_rootfs], BUSYBOX_CONFIG)
    Hutch(env).raw(
        "image", "import", str(layout), "--name", "busybox:latest", "--public", "--local",
        check=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (state_dir / "up.log").open("wb") as log:
        proc = Hutch({**env, **(up_env or {})}).start(
            "up", "--port", str(port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    ctl = Controller(url, "", env, state_dir, registry_port, rebind_port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _ready(url, state_dir / "admin-token"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"hutch up did not come up:\n{ctl.log()}")
            time.sleep(0.1)
        token = (state_dir / "admin-token").read_text().strip()
        ctl = Controller(url, token, env, state_dir, registry_port, rebind_port)
        yield ctl
    finally:
        if ctl.token:
            _destroy_everything(ctl)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _sweep_sandboxes(env)
        # The node's volume pool (made on its first volume) is a loop mount: unmounted, its
        # loop device detached, before its directory goes (else both outlive the test).
        unmount_pool(state_dir / "node" / "volumes")
        shutil.rmtree(state_dir, ignore_errors=True)


def destroy_machines_since(ctl: Controller, started: float) -> None:
    """What a test left running on the shared node (in the default project, and in projects
    made since `started`) is destroyed, so that it holds no capacity the next test needs."""
    with contextlib.suppress(HutchError), ctl.client(None) as admin:
        projects = [
            p for p in admin.projects.list() if p.name == "default" or p.created_at >= started
        ]
    _destroy_in(ctl, projects)


def _destroy_everything(ctl: Controller) -> None:
    with contextlib.suppress(HutchError), ctl.client(None) as admin:
        _destroy_in(ctl, list(admin.projects.list()))


def _destroy_in(ctl: Controller, projects: list[ProjectView]) -> None:
    with contextlib.suppress(HutchError):
        for project in projects:
            with ctl.client(project.name) as client:
                left = [m for m in client.machines.list() if m.state != "destroyed"]
                for m in left:
                    with contextlib.suppress(HutchError):
                        client.machines.delete(m, force=True)
                for m in left:
                    with contextlib.suppress(HutchError):
                        client.machines.wait(m, "destroyed", timeout=30)


def _sweep_sandboxes(env: dict[str, str]) -> None:
    """Whatever the node could not destroy (it should have): removed like an operator would.
    `hutch sandbox ls` lists the sandboxes' directories: with none left (as it should be) the
    CLI, seconds of imports and driver start, has nothing to find."""
    state = Path(env["HUTCH_STATE_DIR"])
    left = [
        d
        for where in (state / "sandboxes", state / "node" / "sandboxes")
        for d in where.glob("*/*")
        if d.is_dir() and not d.name.startswith(".")  # as the drivers list them
    ]
    if not left:
        return
    hutch = Hutch(env)
    listing = hutch("sandbox", "ls", "-a", timeout=60)
    ids = [line.split()[0] for line in listing.stdout.splitlines()[1:] if line.strip()]
    if ids:
        hutch("sandbox", "rm", "-f", *ids, timeout=120)


class _Shared:
    """The one `hutch up` of the session, and how many fixtures use it now."""

    stack = contextlib.ExitStack()
    instance: Controller | None = None
    users = 0


@pytest.fixture(scope="session")
def controller(busybox_rootfs: Path) -> Iterator[Controller]:
    """The shared `hutch up` (see the module's docstring)."""
    if _Shared.instance is None:
        _Shared.instance = _Shared.stack.enter_context(
            running_controller(busybox_rootfs, shared=True)
        )
    _Shared.users += 1
    try:
        yield _Shared.instance
    finally:
        _Shared.users -= 1
        if not _Shared.users:  # the last user stops it, whichever module started it
            _Shared.instance = None
            _Shared.stack.close()


@contextlib.contextmanager
def registry_with_app(ctl: Controller, directory: Path, busybox_rootfs: Path) -> Iterator[str]:
    """A registry where the controller's nodes may pull from, holding an image that prints
    "app"; yields its reference."""
    registry = Registry(directory / "registry", port=ctl.registry_port).start()
    try:
        write_oci_layout(
            directory / "app",
            [busybox_rootfs],
            {**BUSYBOX_CONFIG, "Cmd": ["echo", "app"]},
            ref="v1",
        )
        registry.push(directory / "app", "v1", "demo/app:1")
        yield f"{registry.host}/demo/app:1"
    finally:
        registry.stop()


def new_project(ctl: Controller, prefix: str = "t") -> str:
    """A fresh project, so a test sees only its own machines and quota."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with ctl.client(None) as admin:
        admin.projects.create(name)
    return name
