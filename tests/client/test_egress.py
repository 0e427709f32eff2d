"""Nodes connect only to registries the operator allows (issue 9, SSRF), through the real
`hutch up`, as a member of a project would try it.

The shared controller (tests/controller.py) configures 127.0.0.1:registry_port (trusted as the
operator listed it) and allows the name localhost:rebind_port without configuring it (a name
that resolves to loopback, as DNS rebinding would make a public registry's name do).
"""

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hutch.client import Client, Forbidden, PullFailed
from tests.controller import BUSYBOX_CONFIG, Controller, new_project, registry_with_app
from tests.helpers import free_port
from tests.images.ocibuild import write_oci_layout

C = "container"  # the runtime does not matter here


def _member(controller: Controller) -> tuple[str, str]:
    """A fresh project and a member token of it (no system rights): (project, token)."""
    project = new_project(controller)
    with controller.client(None) as admin:
        return project, admin.projects.tokens.create(project, role="member").secret


@contextlib.contextmanager
def _listening(port: int) -> Iterator[Callable[[], int]]:
    """Sockets listening on port of 127.0.0.1 (and ::1, where there is one); yields a function
    counting the connections they received so far (accepted ones are closed)."""
    sockets = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family)
        try:
            s.bind((host, port))
        except OSError:
            s.close()
            if family == socket.AF_INET:
                raise
            continue
        s.listen(16)
        s.setblocking(False)
        sockets.append(s)
    seen = 0

    def connections() -> int:
        nonlocal seen
        for s in sockets:
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                seen += 1
        return seen

    try:
        yield connections
    finally:
        for s in sockets:
            s.close()


def test_a_pull_from_an_unlisted_registry_is_refused_the_same_open_or_closed(
    controller: Controller,
) -> None:
    project, token = _member(controller)
    port = free_port()
    ref = f"127.0.0.1:{port}/x:y"

    def pull() -> httpx.Response:
        return httpx.post(
            f"{controller.url}/v1/images/pull",
            params={"project": project},
            headers={"Authorization": f"Bearer {token}"},
            json={"ref": ref},
            timeout=60,
        )

    closed = pull()  # nothing listens on the port
    with _listening(port) as connections:
        opened = pull()  # something does
        assert connections() == 0  # the node did not knock
    assert closed.status_code == opened.status_code == 403
    assert closed.headers["content-type"] == opened.headers["content-type"]
    assert closed.content == opened.content  # nothing tells one from the other
    assert closed.json()["detail"] == (
        f"registry 127.0.0.1:{port} is not allowed: nodes pull only from the registries the "
        "operator allows (settings registry_allow and registries)"
    )
    with (
        Client(controller.url, token, project=project) as client,
        pytest.raises(Forbidden, match=f"registry 127.0.0.1:{port} is not allowed"),
    ):
        client.images.pull(ref)  # the SDK says the same


def test_a_machine_from_an_unlisted_registry_is_refused_at_create(
    controller: Controller,
) -> None:
    project, token = _member(controller)
    port = free_port()
    with _listening(port) as connections, Client(controller.url, token, project=project) as c:
        with pytest.raises(Forbidden, match=f"registry 127.0.0.1:{port} is not allowed"):
            c.machines.run(f"127.0.0.1:{port}/x:y", runtime=C)
        assert list(c.machines.list()) == []  # nothing waits to fail later
        assert connections() == 0


def test_an_allowed_name_that_resolves_to_loopback_is_not_connected_to(
    controller: Controller,
) -> None:
    project, token = _member(controller)
    ref = f"localhost:{controller.rebind_port}/x:y"
    with (
        _listening(controller.rebind_port) as connections,
        Client(controller.url, token, project=project) as c,
    ):
        with pytest.raises(PullFailed) as failed:
            c.images.pull(ref)
        assert f"localhost:{controller.rebind_port} is a loopback address" in failed.value.detail
        m = c.machines.create(ref, runtime=C)  # the name is allowed: refused where it is pulled
        ended = c.machines.wait(m, timeout=60)
        assert "is a loopback address" in ended.error
        assert connections() == 0


def test_the_configured_registry_on_loopback_still_pulls(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    project, token = _member(controller)
    with (
        Client(controller.url, token, project=project) as c,
        registry_with_app(controller, tmp_path, busybox_rootfs) as ref,
    ):
        assert ref.startswith(f"127.0.0.1:{controller.registry_port}/")
        image = c.images.pull(ref)
        assert image.names == [ref]
        m = c.machines.run(ref, runtime=C)
        assert c.machines.wait(m, timeout=60).exit_code == 0


def test_an_imported_image_named_after_an_unlisted_registry_runs_for_its_project(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    """Only pulls are refused: the project that has the image runs it; another is refused."""
    ref = f"127.0.0.1:{free_port()}/mine:1"
    layout = tmp_path / "mine"
    write_oci_layout(layout, [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["echo", "mine"]})
    (a, a_token), (b, b_token) = _member(controller), _member(controller)
    with Client(controller.url, a_token, project=a) as owner:
        owner.images.import_(layout, names=[ref])
        m = owner.machines.run(ref, runtime=C)
        assert owner.machines.wait(m, timeout=60).exit_code == 0
    with (
        Client(controller.url, b_token, project=b) as other,
        pytest.raises(Forbidden, match="is not allowed"),
    ):
        other.machines.run(ref, runtime=C)
