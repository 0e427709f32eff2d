"""Images live in the nodes' stores, named per project: through the real `hutch up`, one
project's private image is invisible and unusable to another, which may hold the same name."""

from pathlib import Path

import pytest

from hutch.client import Client, NotFound
from hutch.model.machine import MachineState
from tests.controller import BUSYBOX_CONFIG, Controller, new_project
from tests.images.ocibuild import write_oci_layout

C = "container"  # the runtime does not matter here


def member(controller: Controller) -> Client:
    """A client with a member token of a fresh project (no system rights)."""
    project = new_project(controller)
    with controller.client(None) as admin:
        token = admin.projects.tokens.create(project, role="member")
    return Client(controller.url, token.secret)


def image(tmp_path: Path, busybox_rootfs: Path, says: str) -> Path:
    layout = tmp_path / says
    write_oci_layout(layout, [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["echo", says]})
    return layout


def test_a_private_image_is_its_projects_alone(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    with member(controller) as a, member(controller) as b:
        [secret] = a.images.import_(image(tmp_path, busybox_rootfs, "a-secret"), ["secret:1"])
        assert secret.id not in {i.id for i in b.images.list()}
        for refused in (lambda: b.images.get("secret:1"), lambda: b.images.delete("secret:1")):
            with pytest.raises(NotFound, match="secret:1"):
                refused()
        with pytest.raises(NotFound):
            b.images.get(secret.id)  # not by its digest either
        tried = b.machines.run("secret:1", runtime=C)
        ended = b.machines.wait(tried, timeout=60)
        # Not in B's store: the node looks for it where Docker would (no internet here).
        assert ended.state is MachineState.FAILED
        assert ended.error.startswith("cannot pull secret:1: cannot reach registry docker.io")
        assert [line.data for line in b.machines.logs(tried)] == []

        # B's own image of that name is B's; A still runs its own.
        [own] = b.images.import_(image(tmp_path, busybox_rootfs, "b-own"), ["secret:1"])
        assert own.id != secret.id
        for client, says in ((a, "a-secret\n"), (b, "b-own\n")):
            m = client.machines.run("secret:1", runtime=C)
            client.machines.wait(m, timeout=60)
            assert "".join(line.data for line in client.machines.logs(m)) == says
        assert {i.id for i in a.images.list()} >= {secret.id} and own.id not in {
            i.id for i in a.images.list()
        }
