"""A hostile tenant against volumes, through the SDK against the shared `hutch up` (its node's
LocalBackend, micro-VMs and containers): each attack refused, next to the same request allowed.
"""

import asyncio
import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hutch.client import Client
from hutch.client.errors import Conflict, Invalid, NoCapacity, NotFound
from hutch.model.volume import Volume, VolumeState
from hutch.storage.local import export_stream
from hutch.store import open_store
from tests.controller import Controller, controller, new_project, running_controller

__all__ = ["controller"]

MIB = 1 << 20


@pytest.fixture
def client(controller: Controller) -> Iterator[Client]:
    with controller.client(new_project(controller, "atk")) as c:
        yield c


def _export_of(raw: Path, fs: str) -> Path:
    """An export image (what `hutch volume import` reads) of the raw file `raw`."""
    out = raw.with_suffix(".hvol")
    out.write_bytes(b"".join(export_stream(raw, fs)))  # type: ignore[arg-type]
    return out


def _sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _block_count(ctl: Controller, volume_id: str) -> int:
    """The block count in the superblock of the volume's ext4, read on the node."""
    path = ctl.state_dir / "node" / "volumes" / "pool" / "volumes" / volume_id
    for line in _sh("dumpe2fs", "-h", str(path)).splitlines():
        if line.startswith("Block count:"):
            return int(line.split(":")[1])
    raise AssertionError("no block count")


def test_growing_a_tenants_ext4_never_lets_it_reach_a_device_of_the_node(
    controller: Controller, client: Client, tmp_path: Path
) -> None:
    """Growing an ext4 volume runs e2fsck and resize2fs on the node over a file system a tenant
    may have written block by block. One whose superblock names an external journal by UUID
    made the node's root open a block device of the node: here the loop device of the
    tenant's own raw volume, given to a container (it could be any device with that UUID or
    device number). The grow of such a volume is refused, and the tools never open another
    device; the grow of an untrusted ext4 volume that is only a file system works."""
    # A raw volume holding an ext4 journal device, on a loop device of the node (a container's).
    journal = uuid.uuid4()
    jdev = tmp_path / "jdev"
    jdev.write_bytes(b"")
    subprocess.run(["truncate", "-s", "16M", str(jdev)], check=True)
    _sh("mke2fs", "-q", "-F", "-O", "journal_dev", "-b", "4096", "-U", str(journal), str(jdev))
    client.volumes.import_("jdev", _export_of(jdev, "none"))
    holder = client.machines.run(
        "busybox", ["sleep", "600"], runtime="container", volumes=["jdev:/dev/jdev"]
    )
    assert holder.state == "running", holder.error
    # An ext4 whose journal is that device (made with it on a loop device of the test's own).
    crafted = tmp_path / "crafted"
    subprocess.run(["truncate", "-s", "32M", str(crafted)], check=True)
    loop = _sh("losetup", "-f", "--show", str(jdev)).strip()
    try:
        _sh("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-J", f"device={loop}",
            str(crafted))  # fmt: skip
    finally:
        _sh("losetup", "-d", loop)
    assert str(journal) in _sh("dumpe2fs", "-h", str(crafted))
    plain = tmp_path / "plain"
    subprocess.run(["truncate", "-s", "32M", str(plain)], check=True)
    _sh("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", str(plain))

    ok = client.volumes.import_("plain", _export_of(plain, "ext4"))
    assert ok.untrusted is True
    grown = client.volumes.extend("plain", 64 * MIB)
    assert grown.size_bytes == 64 * MIB
    assert _block_count(controller, ok.id) == 64 * MIB // 4096  # its ext4 grew with it

    bad = client.volumes.import_("crafted", _export_of(crafted, "ext4"))
    with pytest.raises(Invalid, match="e2fsck cannot fix"):
        client.volumes.extend("crafted", 64 * MIB)
    after = client.volumes.get("crafted")
    assert (after.size_bytes, after.state, after.operation) == (32 * MIB, "available", "")
    assert _block_count(controller, bad.id) == 32 * MIB // 4096
    client.machines.delete(holder.id, force=True)


def _created_once_free(client: Client, name: str, size: str, within: float, why: str) -> None:
    """Creates the volume once the pool has room for it: within `within` seconds, else `why`."""
    deadline = time.monotonic() + within
    while True:
        try:
            client.volumes.create(name, size)
        except NoCapacity:
            assert time.monotonic() < deadline, why
            time.sleep(0.2)
        else:
            return


def test_a_pool_promises_what_it_can_hold_and_an_export_held_open_keeps_its_copy_promised(
    busybox_rootfs: Path,
) -> None:
    """One 512 MiB pool, two holes it had (independent; one `hutch up` for both):

    An export reads a reflink copy of its volume. A tenant who held one open (reading no
    further) and deleted the volume kept its blocks in the pool while nothing promised them:
    a new volume was promised the same room, and its writes (or another tenant's) would meet a
    full pool. The copy stays promised while the export runs; once it ends, the room is free.

    The pool promised its volumes its whole size, but its file system keeps part of that
    for itself (log, metadata): a tenant who wrote every byte of the volumes it was promised
    filled the pool before the last one was full, and every volume's next new block on the
    node (another tenant's too) failed. The largest volume the node takes can be written
    whole; a MiB more is refused."""
    with (
        running_controller(busybox_rootfs, {"HUTCH_VOLUME_POOL_MIB": "512"}) as ctl,
        ctl.client(new_project(ctl, "exp")) as client,
    ):
        client.volumes.create("a", "200M", fs="none")
        fill = ["dd", "if=/dev/urandom", "of=/dev/a", "bs=1M", "count=200", "conv=fsync"]
        filler = client.machines.run("busybox", fill, runtime="container", volumes=["a:/dev/a"])
        done = client.machines.wait(filler, timeout=120)
        assert done.exit_code == 0, done.error
        client.machines.delete(filler.id)
        client.machines.wait(filler.id, "destroyed", timeout=60)
        assert client.volumes.get("a").used_bytes >= 200 * MIB
        export = client.volumes.export("a")
        assert next(iter(export))  # its header: the node holds the copy now
        client.volumes.delete("a")
        with pytest.raises(NoCapacity, match="free in its volume pool"):
            client.volumes.create("b", "400M")
        client.volumes.create("b", "200M")  # what the pool holds beside the export's copy
        export.close()  # type: ignore[attr-defined]
        # The export is over: its room is free once the node has seen the reader go (a busy
        # machine may take a moment to notice).
        _created_once_free(client, "c", "200M", 30, "an ended export kept its copy promised")
        client.volumes.delete("b")
        client.volumes.delete("c")

        # The pool (made by the first volume above) is empty again.
        with pytest.raises(NoCapacity) as refused:
            client.volumes.create("huge", "1T")
        free = int(re.search(r"(\d+) bytes free", str(refused.value)).group(1))  # type: ignore[union-attr]
        size = free // MIB * MIB
        with pytest.raises(NoCapacity):
            client.volumes.create("over", size + MIB)
        client.volumes.create("big", size, fs="none")
        fill = ["dd", "if=/dev/zero", "of=/dev/big", "bs=1M", f"count={size // MIB}", "conv=fsync"]
        filler = client.machines.run("busybox", fill, runtime="container", volumes=["big:/dev/big"])
        done = client.machines.wait(filler, timeout=120)
        said = b"".join(line.data.encode() for line in client.machines.logs(filler))
        assert done.exit_code == 0, said
        # Every byte is there; XFS counts the blocks of an extent map among a file's own when a
        # fragmented pool gives it more extents than its inode holds (one 4 KiB block seen).
        assert size <= client.volumes.get("big").used_bytes <= size + 64 * 1024


def test_another_projects_volume_or_snapshot_is_not_found_for_machines_and_forks(
    controller: Controller, client: Client
) -> None:
    """Project B names project A's volume in a machine's volumes (by name, by id), and A's
    snapshot in a fork (by id, from A's volume or from one of B's own): each 404, as a volume
    that does not exist; A does the same and gets it."""
    with controller.client(new_project(controller, "atk")) as other:
        theirs = other.volumes.create("secret", "16M")
        snap = other.volumes.snapshot("secret", "s1")
        mine = client.volumes.create("mine", "16M")
        client.volumes.snapshot("mine", "s1")
        for ref in ("secret", theirs.id):
            with pytest.raises(NotFound, match="no volume"):
                client.machines.create("busybox", ["true"], runtime="container",
                                       volumes=[f"{ref}:/data"], start=False)  # fmt: skip
        for source in (f"{theirs.id}@{snap.id}", f"secret@{snap.id}", f"mine@{snap.id}"):
            with pytest.raises(NotFound):
                client.volumes.create("stolen", source=source)
        assert [v.name for v in client.volumes.list()] == ["mine"]
        assert client.volumes.get(mine.id).state == "available"
        # The owner may.
        m = other.machines.create("busybox", ["true"], runtime="container",
                                  volumes=[f"{theirs.id}:/data"], start=False)  # fmt: skip
        assert m.volumes[0].volume_id == theirs.id
        other.machines.delete(m.id)
        assert other.volumes.create("fork", source=f"{theirs.id}@{snap.id}").name == "fork"
        assert client.volumes.create("fork", source="mine@s1").name == "fork"


async def _left_creating(ctl: Controller, project: str, name: str, until: float) -> None:
    """A volume as a controller killed while its node made it leaves it: `creating`, taken by
    `made` until `until` (the shared `hutch up`'s store, written beside it)."""
    store = open_store(f"sqlite:///{ctl.state_dir / 'controller.db'}")
    await store.open()
    try:
        async with store.write() as tx:
            owner = await tx.projects.by_name(project)
            node = (await tx.nodes.list())[0]
            await tx.volumes.create(
                Volume(
                    id=f"v-{uuid.uuid4().hex[:12]}", project_id=owner.id, name=name,
                    size_bytes=16 * MIB, fs="ext4", state=VolumeState.CREATING, node_id=node.id,
                    created_at=time.time(), operation="made", operation_until=until,
                )
            )  # fmt: skip
    finally:
        await store.close()


def test_a_volume_whose_maker_died_is_deleted_once_its_mark_lapses(
    controller: Controller, client: Client
) -> None:
    """A controller killed while its node made a volume (a create, a fork, an import) left it
    `creating` for ever: `rm` refused it ("being made"), its name and quota stayed taken, and
    its project could not be deleted. The making now holds the volume like any operation: while
    its mark holds, `rm` is 409; once it lapses (its maker is gone), `rm` deletes it."""
    project = client.project or ""
    asyncio.run(_left_creating(controller, project, "busy", time.time() + 900))
    asyncio.run(_left_creating(controller, project, "orphan", time.time() - 1))
    assert {v.name: (v.state, v.operation) for v in client.volumes.list()} == {
        "busy": ("creating", "made"), "orphan": ("creating", ""),  # (a lapsed mark shows none)
    }  # fmt: skip
    with pytest.raises(Conflict, match="being made"):
        client.volumes.delete("busy")
    client.volumes.delete("orphan")
    assert [v.name for v in client.volumes.list()] == ["busy"]
    assert client.volumes.create("orphan", "16M").state == "available"  # its name is free
    made = client.volumes.create("fresh", "16M")
    assert (made.state, made.operation) == ("available", "")


def test_an_export_nobody_reads_is_ended_by_its_node(busybox_rootfs: Path, tmp_path: Path) -> None:
    """An export held open for ever kept its copy (promised) in the pool for ever: a tenant could
    export, delete and make its volume again and again, each copy beyond its quota, until the
    pool refused everyone. The node ends an export its reader stopped reading for
    `volume_export_idle` seconds: its room comes back, and what the reader got is refused by
    an import (no trailer). An export read on is whole."""
    env = {"HUTCH_VOLUME_POOL_MIB": "512", "HUTCH_VOLUME_EXPORT_IDLE": "1"}
    with (
        running_controller(busybox_rootfs, env) as ctl,
        ctl.client(new_project(ctl, "idle")) as client,
    ):
        client.volumes.create("a", "200M", fs="none")
        fill = ["dd", "if=/dev/urandom", "of=/dev/a", "bs=1M", "count=200", "conv=fsync"]
        filler = client.machines.run("busybox", fill, runtime="container", volumes=["a:/dev/a"])
        assert client.machines.wait(filler, timeout=120).exit_code == 0
        client.machines.delete(filler.id)
        client.machines.wait(filler.id, "destroyed", timeout=60)
        whole = tmp_path / "whole.hvol"
        with whole.open("wb") as f:
            for chunk in client.volumes.export("a"):
                f.write(chunk)
        export = client.volumes.export("a")
        got = bytearray(next(export))
        client.volumes.delete("a")
        # The node ends the export once its reader has not read for a second.
        _created_once_free(client, "b", "400M", 60, "the held export was never ended")
        with contextlib.suppress(httpx.HTTPError):
            for chunk in export:
                got += chunk
        cut = tmp_path / "cut.hvol"
        cut.write_bytes(bytes(got))
        assert len(got) < whole.stat().st_size
        client.volumes.delete("b")
        with pytest.raises(Invalid, match="truncated"):
            client.volumes.import_("cut", cut)
        assert client.volumes.import_("whole", whole).size_bytes == 200 * MIB
