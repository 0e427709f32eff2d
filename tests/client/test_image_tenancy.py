"""Images live in the nodes' stores, named per project: through the real `hutch up`, one
project's private image is invisible and unusable to another, which may hold the same name."""

from pathlib import Path

import pytest

from hutch.client import Client, Forbidden, InsufficientStorage, NotFound, QuotaExceeded
from hutch.model.machine import MachineState
from tests.controller import BUSYBOX_CONFIG, Controller, new_project, running_controller
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


def test_a_tenant_cannot_make_others_run_its_image(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    """The attack: B imports its own root as busybox:latest and nginx:latest --public; C and A
    then ran B's root with their own secrets in the environment."""
    evil = image(tmp_path, busybox_rootfs, "evil")
    with member(controller) as b, member(controller) as c, controller.client() as admin:
        with pytest.raises(Forbidden, match="catalogue"):
            b.images.import_(evil, ["busybox:latest", "nginx:latest"], public=True)
        # Under its own names B's root is B's alone.
        [own] = b.images.import_(evil, ["busybox:latest", "nginx:latest"])
        catalogue = admin.images.get("busybox:latest")  # what tests/controller.py published
        assert catalogue.public and catalogue.id != own.id

        m = c.machines.run("busybox:latest", command=["echo", "c-ran"], runtime=C)
        ended = c.machines.wait(m, timeout=60)
        assert "".join(line.data for line in c.machines.logs(m)) == "c-ran\n"
        assert (ended.image_digest, ended.image_source) == (catalogue.id, "catalogue")
        m = c.machines.run("nginx:latest", runtime=C)
        assert c.machines.wait(m, timeout=60).state is MachineState.FAILED  # not B's either

        m = b.machines.run("busybox:latest", runtime=C)
        ended = b.machines.wait(m, timeout=60)
        assert "".join(line.data for line in b.machines.logs(m)) == "evil\n"
        assert (ended.image_digest, ended.image_source) == (own.id, "project")

        # A member may not take the operator's name away either.
        with pytest.raises(Forbidden, match="catalogue"):
            c.images.delete("busybox:latest", public=True)
        with pytest.raises(Forbidden, match="catalogue"):
            c.images.delete("busybox:latest")
        assert admin.images.get("busybox:latest").id == catalogue.id


def test_a_deleted_projects_images_are_not_the_next_ones(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    name = new_project(controller, "projd")
    secret = image(tmp_path, busybox_rootfs, "d-secret")
    with controller.client(None) as admin:
        with controller.client(name) as old:
            [held] = old.images.import_(secret, ["dsecret:v1"])
            assert old.images.get("dsecret:v1").id == held.id  # the probe works while it is its
        admin.projects.delete(name)
        admin.projects.create(name)
        with controller.client(name) as new:
            with pytest.raises(NotFound):
                new.images.get("dsecret:v1")
            assert held.id not in {i.id for i in new.images.list()}
            m = new.machines.run("dsecret:v1", runtime=C)
            assert new.machines.wait(m, timeout=60).state is MachineState.FAILED
            assert [line.data for line in new.machines.logs(m)] == []


def test_images_count_against_the_projects_quota(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    """A 1 MB archive could become a 1 GiB root: what images unpack to is a quota of its own."""
    name = new_project(controller)
    bomb_root = tmp_path / "bomb"
    bomb_root.mkdir()
    (bomb_root / "zeros").write_bytes(bytes(48 << 20))  # gzip makes this about 50 KiB
    bomb = tmp_path / "bomb-layout"
    write_oci_layout(bomb, [busybox_rootfs, bomb_root], BUSYBOX_CONFIG)
    assert sum(f.stat().st_size for f in bomb.rglob("*") if f.is_file()) < 4 << 20
    with controller.client(None) as admin, controller.client(name) as c:
        admin.projects.set_quota(name, images_mib=8, images_unpacked_mib=32)
        c.images.import_(image(tmp_path, busybox_rootfs, "fits"), ["fits:1"])  # within both
        with pytest.raises(QuotaExceeded, match="unpacked"):
            c.images.import_(bomb, ["bomb:1"])
        with pytest.raises(NotFound):
            c.images.get("bomb:1")
        usage = admin.projects.quota(name).usage
        assert usage.images_unpacked_mib is not None and 0 < usage.images_unpacked_mib <= 32
        admin.projects.set_quota(name, images_mib=8, images_unpacked_mib=64)
        [ok] = c.images.import_(bomb, ["bomb:1"])  # the same archive, once the quota allows
        assert ok.unpacked > 48 << 20


def test_a_node_keeps_its_free_space_floor(tmp_path: Path, busybox_rootfs: Path) -> None:
    """An import that would take the node's disk below `image_free_floor` is a clear 507;
    the node still runs what it holds."""
    floor = {"HUTCH_IMAGE_FREE_FLOOR": str(1 << 50)}
    with running_controller(busybox_rootfs, up_env=floor) as ctl, ctl.client() as c:
        with pytest.raises(InsufficientStorage, match="of its disk free"):
            c.images.import_(image(tmp_path, busybox_rootfs, "big"), ["big:1"])
        m = c.machines.run("busybox:latest", command=["echo", "still"], runtime=C)
        c.machines.wait(m, timeout=60)
        assert "".join(line.data for line in c.machines.logs(m)) == "still\n"
