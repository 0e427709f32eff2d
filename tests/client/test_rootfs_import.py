"""A plain root filesystem (a tar of one, like `docker import` takes, or a root directory) imports
through the SDK and the HTTP API as it does through the CLI: the controller tells it from an
image archive by its content and packs it as a one-layer image, refusing hostile entries and
bounding what it unpacks to."""

import bz2
import functools
import io
import tarfile
from pathlib import Path

import httpx
import pytest

from hutch.client import AsyncClient, Client, Invalid, QuotaExceeded
from tests.cli.test_rootfs import debootstrap_like
from tests.controller import Controller, new_project

C = "container"  # the runtime does not matter here


def rootfs_tarball(busybox_rootfs: Path, dest: Path) -> Path:
    """busybox's tree as debootstrap leaves one, as `tar -C tree -czf dest .` packs it."""
    tree = debootstrap_like(busybox_rootfs, dest.parent / f"{dest.name}.d")
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(tree, arcname=".")
    return dest


def ran(client: Client, image: str, *command: str) -> str:
    m = client.machines.run(image, list(command), runtime=C)
    client.machines.wait(m, timeout=60)
    return "".join(line.data for line in client.machines.logs(m))


def test_the_sdk_imports_a_root_filesystem_tarball_and_a_root_directory(
    client: Client, tmp_path: Path, busybox_rootfs: Path
) -> None:
    tarball = rootfs_tarball(busybox_rootfs, tmp_path / "rootfs.tar.gz")
    [image] = client.images.import_(tarball, names=["deb:12"])
    assert image.names == ["docker.io/library/deb:12"]
    assert ran(client, "deb:12", "cat", "/usr-os-release") == "ID=debian-ish\n"
    assert ran(client, "deb:12", "sh", "-c", "echo $PATH") == (
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )  # a root filesystem's default config, as the CLI gives it
    with tarball.open("rb") as f:  # an open file, and bytes: the same image
        assert [i.id for i in client.images.import_(f, names=["deb:file"])] == [image.id]
    assert [i.id for i in client.images.import_(tarball.read_bytes())] == [image.id]
    tree = debootstrap_like(busybox_rootfs, tmp_path / "tree")
    [from_dir] = client.images.import_(tree, names=["deb:dir"])
    assert ran(client, "deb:dir", "cat", "/usr-os-release") == "ID=debian-ish\n"
    assert from_dir.names == ["docker.io/library/deb:dir"]  # sent as its tar, packed alike


async def test_the_async_sdk_imports_a_root_filesystem_tarball(
    aclient: AsyncClient, client: Client, tmp_path: Path, busybox_rootfs: Path
) -> None:
    tarball = rootfs_tarball(busybox_rootfs, tmp_path / "rootfs.tar.gz")
    [image] = await aclient.images.import_(tarball, names=["adeb:1"])
    assert image.names == ["docker.io/library/adeb:1"]
    assert ran(client, "adeb:1", "cat", "/usr-os-release") == "ID=debian-ish\n"


def test_the_api_takes_a_root_filesystem_tarball(
    controller: Controller, project: str, tmp_path: Path, busybox_rootfs: Path
) -> None:
    tarball = rootfs_tarball(busybox_rootfs, tmp_path / "rootfs.tar.gz")
    answer = httpx.post(
        f"{controller.url}/v1/images/import",
        params={"project": project, "name": "deb:api"},
        headers={"Authorization": f"Bearer {controller.token}"},
        content=tarball.read_bytes(),
        timeout=120,
    )
    assert answer.status_code == 201, answer.text
    [view] = answer.json()
    assert view["names"] == ["docker.io/library/deb:api"]
    with controller.client(project) as c:
        assert ran(c, "deb:api", "cat", "/usr-os-release") == "ID=debian-ish\n"


def evil(entry: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        ok = tarfile.TarInfo("etc/ok")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        entry.size = len(data) if entry.isreg() else 0
        tar.addfile(entry, io.BytesIO(data) if entry.isreg() else None)
    return out.getvalue()


def hard_link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (evil(tarfile.TarInfo("../../etc/evil")), "'..'"),
        (evil(tarfile.TarInfo("/etc/evil")), "absolute path"),
        (evil(hard_link("etc/passwd", "../../../etc/shadow")), "'..'"),
    ],
)
def test_a_hostile_root_filesystem_tarball_is_refused(
    client: Client, archive: bytes, message: str
) -> None:
    with pytest.raises(Invalid, match=message):
        client.images.import_(archive, names=["evil:1"])
    assert "evil" not in str([i.names for i in client.images.list()])
    fine = evil(tarfile.TarInfo("etc/fine"))  # the same shape without the hostile entry
    [image] = client.images.import_(fine, names=["fine:1"])
    assert image.names == ["docker.io/library/fine:1"]


def test_what_a_root_filesystem_tarball_unpacks_to_is_bounded(
    controller: Controller, tmp_path: Path
) -> None:
    """A small gzip of zeros is a large root: refused by the project's unpacked quota while it
    is packed, not after it filled a disk."""
    name = new_project(controller)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 48 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 1 << 20
    with controller.client(None) as admin, controller.client(name) as c:
        admin.projects.set_quota(name, images_unpacked_mib=16)
        with pytest.raises(QuotaExceeded, match="root filesystem unpacks to more than"):
            c.images.import_(bomb, names=["bomb:1"])
        assert [i for i in c.images.list() if i.source == "project"] == []
        admin.projects.set_quota(name, images_unpacked_mib=64)
        [image] = c.images.import_(bomb, names=["bomb:1"])
        assert image.unpacked >= 48 << 20


@functools.cache
def gib_of_zeros() -> bytes:
    """A bzip2 stream of 1 GiB of zeros: under a kilobyte, but ~7 s of a core to make (so once)."""
    compressor, chunk = bz2.BZ2Compressor(9), bytes(1 << 24)
    return b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()


def bz2_bomb(header: tarfile.TarInfo, gib: int) -> bytes:
    """A tar whose first header announces `gib` GiB of zeros that follow, bzip2'd: under a
    kilobyte per GiB, seconds of CPU per GiB to decompress."""
    header.size = gib << 30
    return (
        bz2.compress(header.tobuf(tarfile.GNU_FORMAT))
        + gib_of_zeros() * gib
        + bz2.compress(bytes(1024))
    )


def test_a_compressed_bomb_is_refused_without_decompressing_it(controller: Controller) -> None:
    """64 GiB of zeros in 50 KiB of bzip2: refused by the unpacked quota before the controller
    decompresses beyond it (on main it decompressed all of it first, minutes of a core)."""
    name = new_project(controller)
    with controller.client(None) as admin:
        admin.projects.set_quota(name, images_unpacked_mib=16)
    bomb = bz2_bomb(tarfile.TarInfo("zeros"), 64)
    assert len(bomb) < 64 << 10
    answer = httpx.post(
        f"{controller.url}/v1/images/import",
        params={"project": name, "name": "bomb:1"},
        headers={"Authorization": f"Bearer {controller.token}"},
        content=bomb,
        timeout=30,  # a bound, not a speed target: decompressing it all takes minutes
    )
    assert answer.status_code == 403, answer.text
    assert "unpacked image quota" in answer.json()["detail"]
    small = bz2_bomb(tarfile.TarInfo("zeros"), 0)  # the same shape, within the quota
    with controller.client(name) as c:
        [image] = c.images.import_(small, names=["small:1"])
        assert image.names == ["docker.io/library/small:1"]


def test_a_huge_tar_header_is_refused_without_holding_it(controller: Controller) -> None:
    """A pax header announcing 2 GiB (tarfile reads one into memory whole): refused while
    reading it, by the controller (on main it held it all in memory, then a node refused it)."""
    name = new_project(controller)
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    bomb = bz2_bomb(header, 2)
    with controller.client(name) as c, pytest.raises(Invalid, match="tar header too large"):
        c.images.import_(bomb, names=["pax:1"])
