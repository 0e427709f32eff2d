"""Images live in the nodes' stores, named per project: through the real `hutch up`, one
project's private image is invisible and unusable to another, which may hold the same name."""

import time
from pathlib import Path

import pytest

from hutch.client import (
    Client,
    Forbidden,
    InsufficientStorage,
    Invalid,
    NotFound,
    QuotaExceeded,
)
from hutch.model.machine import MachineState
from tests.controller import (
    BUSYBOX_CONFIG,
    Controller,
    new_project,
    registry_with_app,
    running_controller,
)
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
        # Not B's: a name without a registry is not pulled, and no machine is made.
        with pytest.raises(NotFound, match="no image 'secret:1' in project"):
            b.machines.run("secret:1", runtime=C)
        assert list(b.machines.list()) == []

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
        with pytest.raises(NotFound, match="no image 'nginx:latest'"):  # not B's either
            c.machines.run("nginx:latest", runtime=C)

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
            with pytest.raises(NotFound, match="no image 'dsecret:v1'"):
                new.machines.run("dsecret:v1", runtime=C)
            assert list(new.machines.list()) == []


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


def test_a_machine_cannot_pull_past_the_image_quota(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    """`hutch run REF` pulls what the project lacks: under the same quota as `image pull`."""
    tight, roomy = new_project(controller), new_project(controller)
    with controller.client(None) as admin:
        admin.projects.set_quota(tight, images_unpacked_mib=1)  # busybox unpacks to more
    with (
        registry_with_app(controller, tmp_path, busybox_rootfs) as ref,
        controller.client(tight) as t,
        controller.client(roomy) as r,
    ):
        m = r.machines.run(ref, runtime=C)
        r.machines.wait(m, timeout=60)
        assert "".join(line.data for line in r.machines.logs(m)) == "app\n"
        m = t.machines.create(ref, runtime=C)
        ended = t.machines.wait(m, timeout=60)
        assert ended.state is MachineState.FAILED and "quota" in ended.error
        with pytest.raises(NotFound):
            t.images.get(ref)


def blobs(controller: Controller) -> set[str]:
    return {p.name for p in (controller.state_dir / "images" / "blobs" / "sha256").iterdir()}


def test_refused_imports_leave_nothing_behind(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    name = new_project(controller)
    with controller.client(None) as admin, controller.client(name) as c:
        admin.projects.set_quota(name, images_mib=1, images_unpacked_mib=1)
        before = blobs(controller)
        salt = tmp_path / "salt"
        salt.mkdir()
        (salt / "salt").write_text(name)  # layers no other image has
        layout = tmp_path / "salted"
        write_oci_layout(layout, [busybox_rootfs, salt], BUSYBOX_CONFIG)
        with pytest.raises(QuotaExceeded):
            c.images.import_(layout, ["salted:1"])
        deadline = time.monotonic() + 20
        while blobs(controller) - before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not blobs(controller) - before
        # What fits still lands.
        admin.projects.set_quota(name, images_mib=None, images_unpacked_mib=None)
        [kept] = c.images.import_(layout, ["salted:1"])
        assert kept.id.removeprefix("sha256:") in blobs(controller)


def test_the_controller_holds_no_more_of_an_import_than_the_quota(controller: Controller) -> None:
    """Not an archive at all, and larger than the quota: refused for its size as it arrives,
    before anything reads it as an archive."""
    name = new_project(controller)
    with controller.client(None) as admin, controller.client(name) as c:
        admin.projects.set_quota(name, images_mib=1)
        with pytest.raises(QuotaExceeded, match="archive is larger than the project's"):
            c.images.import_(bytes(3 << 20), ["junk:1"])
        with pytest.raises(Invalid, match="archive"):  # the same bytes within the quota
            c.images.import_(bytes(512 << 10), ["junk:1"])


def test_a_bare_digest_the_project_lacks_is_refused_at_create(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    with member(controller) as a, member(controller) as b:
        [held] = a.images.import_(image(tmp_path, busybox_rootfs, "by-digest"), ["bd:1"])
        for ref in (held.id, held.id.removeprefix("sha256:")[:12]):
            with pytest.raises(NotFound, match="no image"):
                b.machines.run(ref, runtime=C)
            m = a.machines.run(ref, runtime=C)  # its own, by the same digest
            a.machines.wait(m, timeout=60)
            assert "".join(line.data for line in a.machines.logs(m)) == "by-digest\n"


def test_an_image_shows_when_its_project_got_it_not_when_another_did(
    controller: Controller, tmp_path: Path, busybox_rootfs: Path
) -> None:
    layout = image(tmp_path, busybox_rootfs, "same-bytes")
    with member(controller) as a, member(controller) as b:
        [first] = a.images.import_(layout, ["same:1"])
        time.sleep(1.1)
        later = time.time()
        [second] = b.images.import_(layout, ["same:1"])
        assert second.id == first.id
        assert second.created >= later - 0.01 and b.images.get("same:1").created >= later - 0.01
        assert a.images.get("same:1").created == first.created
