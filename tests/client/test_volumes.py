"""Volumes through the async SDK against a real `hutch up` (its node's LocalBackend), on SQLite
(the shared one) and on PostgreSQL (one of its own): the round trip, concurrent operations on
one volume, imports against the quota, current usage, and a hostile pass where every refusal is
a clear 4xx next to the same request allowed."""

import asyncio
import os
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hutch.client import AsyncClient
from hutch.client.errors import Conflict, Invalid, NoCapacity, NotFound, QuotaExceeded
from hutch.storage.local import export_stream
from tests.controller import Controller, controller, new_project, running_controller
from tests.store.postgres import PostgresCluster

__all__ = ["controller"]  # the session fixture, for the tests here

MIB = 1 << 20
GIB = 1 << 30


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def ctl(request: pytest.FixtureRequest, busybox_rootfs: Path) -> Iterator[Controller]:
    """The shared `hutch up` (SQLite), or one over PostgreSQL for the module's tests (each in
    projects of its own). Module-scoped, so the SQLite tests all run before the PostgreSQL
    one starts: its block moves this thread to a network namespace of its own."""
    if request.param == "sqlite":
        yield request.getfixturevalue("controller")
        return
    postgres: PostgresCluster = request.getfixturevalue("postgres")
    database = postgres.create_database()
    try:
        url = postgres.url(database)
        with running_controller(busybox_rootfs, {"HUTCH_DATABASE_URL": url}) as own:
            yield own
    finally:
        postgres.drop_database(database)


@pytest.fixture
async def vc(ctl: Controller) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(ctl.url, ctl.token, project=new_project(ctl, "av")) as c:
        yield c


def _image(tmp: Path, size: int, data: bytes = b"", fs: str = "none") -> Path:
    """An export image of a `size`-byte volume holding `data` at 1 MiB."""
    raw = tmp / f"raw-{size}"
    with raw.open("wb") as f:
        f.truncate(size)
        if data:
            f.seek(MIB)
            f.write(data)
    out = tmp / f"img-{size}-{len(data)}.hvol"
    out.write_bytes(b"".join(export_stream(raw, fs)))  # type: ignore[arg-type]
    raw.unlink()
    return out


def _file_of(ctl: Controller, volume_id: str) -> Path:
    """The volume's file on the node (what a workload writes to)."""
    return ctl.state_dir / "node" / "volumes" / "pool" / "volumes" / volume_id


async def test_the_async_sdk_round_trip(vc: AsyncClient, tmp_path: Path) -> None:
    v = await vc.volumes.create("db", "64M")
    assert v.state == "available" and v.size_bytes == 64 * MIB and v.node
    snap = await vc.volumes.snapshot("db", "s1")
    assert snap.volume == "db" and [s.name async for s in vc.volumes.snapshots("db")] == ["s1"]
    fork = await vc.volumes.create("preview", source="db@s1")
    assert fork.node == v.node and fork.size_bytes == v.size_bytes
    image = b"".join([c async for c in vc.volumes.export("db")])
    assert image.startswith(b"HUTCHVOL")
    path = tmp_path / "db.hvol"
    path.write_bytes(image)
    copy = await vc.volumes.import_("copy", path)
    assert copy.size_bytes == 64 * MIB and copy.fs == "ext4"
    assert b"".join([c async for c in vc.volumes.export("copy")]) == image
    assert (await vc.volumes.extend("copy", "128M")).size_bytes == 128 * MIB
    assert (await vc.volumes.restore("db", "s1")).size_bytes == 64 * MIB
    await vc.volumes.delete_snapshot("db", "s1")
    assert sorted([x.name async for x in vc.volumes.list()]) == ["copy", "db", "preview"]
    for name in ("preview", "copy", "db"):
        await vc.volumes.delete(name)
    with pytest.raises(NotFound):
        await vc.volumes.get("db")


async def _settle(calls: list[Any], gone: bool = False) -> list[Any]:
    """Each call's result: a success, or a refusal for another operation under way (or, when
    the volume may be `gone`, not found): never a 500."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        if gone and isinstance(r, NotFound):
            continue
        if isinstance(r, BaseException):
            assert isinstance(r, Conflict), repr(r)
            assert "is being" in str(r), str(r)
    return results


async def _agrees_with_its_node(vc: AsyncClient, ref: str) -> None:
    """What the store says of the volume is what its node holds."""
    v = await vc.volumes.get(ref)
    assert v.operation == "", v
    head = b"".join([c async for c in vc.volumes.export(ref)])[:32]
    assert struct.unpack(">Q", head[16:24])[0] == v.size_bytes
    async for s in vc.volumes.snapshots(ref):  # each listed snapshot exists on the node
        assert b"".join([c async for c in vc.volumes.export(ref, s.name)]).startswith(b"HUTCH")


async def test_concurrent_operations_on_one_volume_take_turns(vc: AsyncClient) -> None:
    await vc.volumes.create("db", "64M")
    await vc.volumes.snapshot("db", "s0")
    size = 64 * MIB
    refused = 0
    for round_ in range(3):
        size += 64 * MIB
        results = await _settle([
            vc.volumes.extend("db", size),
            *(vc.volumes.snapshot("db", f"r{round_}-{i}") for i in range(3)),
            vc.volumes.restore("db", "s0"),
            vc.volumes.create(f"fork{round_}", source="db"),
            vc.volumes.delete_snapshot("db", "s0"),
        ])  # fmt: skip
        refused += sum(isinstance(r, Conflict) for r in results)
        assert any(not isinstance(r, BaseException) for r in results)
        await _agrees_with_its_node(vc, "db")
        if "s0" not in [s.name async for s in vc.volumes.snapshots("db")]:
            await vc.volumes.snapshot("db", "s0")
    assert refused, "no operation ever met another under way"
    # A delete racing snapshots: the volume is gone, or there with what its node holds.
    results = await _settle([
        vc.volumes.delete("db"), *(vc.volumes.snapshot("db", f"last{i}") for i in range(3)),
    ], gone=True)  # fmt: skip
    if isinstance(results[0], BaseException):
        await _agrees_with_its_node(vc, "db")
        await vc.volumes.delete("db")
    with pytest.raises(NotFound):
        await vc.volumes.get("db")
    forks = [v.name async for v in vc.volumes.list()]
    assert all(name.startswith("fork") for name in forks), forks
    async for v in vc.volumes.list():
        await vc.volumes.delete(v.id)


async def test_an_import_beyond_the_room_left_is_quota_exceeded(
    ctl: Controller, vc: AsyncClient, tmp_path: Path
) -> None:
    project = vc.project
    assert project is not None
    async with AsyncClient(ctl.url, ctl.token, project=None) as admin:
        await admin.projects.set_quota(project, volume_gib=1)
    await vc.volumes.create("a", "768M")
    big = _image(tmp_path, 512 * MIB)
    with pytest.raises(QuotaExceeded, match="volume_gib"):
        await vc.volumes.import_("over", big)
    assert [v.name async for v in vc.volumes.list()] == ["a"]
    small = _image(tmp_path, 256 * MIB)
    assert (await vc.volumes.import_("fits", small)).size_bytes == 256 * MIB  # the room left
    for name in ("a", "fits"):
        await vc.volumes.delete(name)


async def test_usage_is_current_and_shared_extents_count_once(
    ctl: Controller, vc: AsyncClient, tmp_path: Path
) -> None:
    data = os.urandom(8 * MIB)
    src = await vc.volumes.import_("src", _image(tmp_path, 64 * MIB, data))
    assert 8 * MIB <= src.used_bytes < 9 * MIB
    fork = await vc.volumes.create("fork", source="src")
    snap = await vc.volumes.snapshot("src", "s")
    # Fresh: the fork and the snapshot share every extent with their source: their own is ~0.
    assert (await vc.volumes.get("fork")).used_bytes < MIB
    assert [s.used_bytes async for s in vc.volumes.snapshots("src")] < [MIB], snap
    assert 8 * MIB <= (await vc.volumes.get("src")).used_bytes < 9 * MIB
    # A workload writes 4 MiB into the fork: inspect and ls say so, with no operation since.
    with _file_of(ctl, fork.id).open("r+b") as f:
        f.seek(32 * MIB)
        f.write(os.urandom(4 * MIB))
        os.fsync(f.fileno())
    assert 4 * MIB <= (await vc.volumes.get("fork")).used_bytes < 5 * MIB
    listed = {v.name: v.used_bytes async for v in vc.volumes.list()}
    assert 4 * MIB <= listed["fork"] < 5 * MIB and 8 * MIB <= listed["src"] < 9 * MIB
    # The source gone, the snapshot's and the fork's extents are their own.
    await vc.volumes.delete("src")
    # XFS unshares a deleted file's extents in the background (its inode's inactivation): the
    # fork's figure follows within a moment, not always at the next read.
    async with asyncio.timeout(10):
        while (used := (await vc.volumes.get("fork")).used_bytes) < 12 * MIB:
            await asyncio.sleep(0.1)
    assert 12 * MIB <= used < 13 * MIB
    await vc.volumes.delete("fork")


# -- a hostile pass ----------------------------------------------------------------------------


def _http(ctl: Controller, project: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=ctl.url, params={"project": project}, timeout=60,
        headers={"Authorization": f"Bearer {ctl.token}"},
    )  # fmt: skip


def _clear_4xx(r: httpx.Response, *statuses: int) -> None:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.text
    assert r.json()["detail"], r.text
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text)


async def test_another_projects_volumes_and_snapshots_are_not_found(ctl: Controller) -> None:
    mine, theirs = new_project(ctl, "av"), new_project(ctl, "av")
    async with _http(ctl, mine) as me, _http(ctl, theirs) as them:
        v = (await me.post("/v1/volumes", json={"name": "private", "size_bytes": 64 * MIB})).json()
        s = (await me.post("/v1/volumes/private/snapshots", json={"name": "snap"})).json()
        own = await them.post("/v1/volumes", json={"name": "own", "size_bytes": 64 * MIB})
        assert own.status_code == 201, own.text
        for ref in ("private", v["id"]):
            probes: list[tuple[str, str, dict[str, Any]]] = [
                ("GET", f"/v1/volumes/{ref}", {}),
                ("DELETE", f"/v1/volumes/{ref}", {}),
                ("POST", f"/v1/volumes/{ref}/extend", {"json": {"size_bytes": 128 * MIB}}),
                ("GET", f"/v1/volumes/{ref}/export", {}),
                ("GET", f"/v1/volumes/{ref}/export", {"params": {"snapshot": s["id"]}}),
                ("GET", f"/v1/volumes/{ref}/snapshots", {}),
                ("POST", f"/v1/volumes/{ref}/snapshots", {"json": {"name": "x"}}),
                ("POST", "/v1/volumes", {"json": {"name": "stolen", "source": ref}}),
                ("POST", "/v1/volumes", {"json": {"name": "stolen", "source": f"{ref}@snap"}}),
            ]
            for snap in ("snap", s["id"]):
                probes += [
                    ("DELETE", f"/v1/volumes/{ref}/snapshots/{snap}", {}),
                    ("POST", f"/v1/volumes/{ref}/snapshots/{snap}/restore", {}),
                ]
            for method, path, kwargs in probes:
                r = await them.request(method, path, **kwargs)
                _clear_4xx(r, 404)
        # Their own volume, with my snapshot's id: not theirs either.
        for method, path, params in (
            ("POST", f"/v1/volumes/own/snapshots/{s['id']}/restore", {}),
            ("DELETE", f"/v1/volumes/own/snapshots/{s['id']}", {}),
            ("GET", "/v1/volumes/own/export", {"snapshot": s["id"]}),
        ):
            _clear_4xx(await them.request(method, path, params=params), 404)
        r = await them.post("/v1/volumes", json={"name": "x", "source": f"own@{s['id']}"})
        _clear_4xx(r, 404)
        # The same probes, allowed where they belong.
        assert (await me.get(f"/v1/volumes/{v['id']}")).status_code == 200
        r = await me.get("/v1/volumes/private/export", params={"snapshot": s["id"]})
        assert r.status_code == 200, r.text
        r = await me.post(f"/v1/volumes/private/snapshots/{s['id']}/restore")
        assert r.status_code == 200, r.text
        for who, name in ((me, "private"), (them, "own")):
            assert (await who.delete(f"/v1/volumes/{name}")).status_code == 204


async def test_forged_imports_bad_names_and_sizes_are_clear_4xx(
    ctl: Controller, tmp_path: Path
) -> None:
    project = new_project(ctl, "av")
    async with _http(ctl, project) as api:
        good = _image(tmp_path, 16 * MIB).read_bytes()
        header = bytearray(good[:32])
        forged = []
        for size in ((1 << 64) - 1, 1 << 62, 16 * MIB + 1, 0):
            h = bytearray(header)
            h[16:24] = struct.pack(">Q", size)
            forged.append(bytes(h) + good[32:])
        forged += [b"NOTHUTCH" + good[8:], good[:20], b"", good[:-1], good + b"x"]
        for body in forged:
            r = await api.post("/v1/volumes/import", params={"name": "x"}, content=body)
            _clear_4xx(r, 400, 403)
        assert [v["name"] for v in (await api.get("/v1/volumes")).json()["items"]] == []
        r = await api.post("/v1/volumes/import", params={"name": "x"}, content=good)
        assert r.status_code == 201, r.text
        for name in ("../x", "a/b", "x" * 300, "é", "日本", "A", "-x", ".", ""):
            r = await api.post("/v1/volumes", json={"name": name, "size_bytes": 64 * MIB})
            _clear_4xx(r, 400, 422)
            r = await api.post("/v1/volumes/x/snapshots", json={"name": name or "."})
            _clear_4xx(r, 400, 422)
            r = await api.post("/v1/volumes/import", params={"name": name or "."}, content=good)
            _clear_4xx(r, 400, 422)
        for ref in ("..%2Fx", "a%2Fb", "%00", "x" * 300):
            _clear_4xx(await api.get(f"/v1/volumes/{ref}"), 404, 422)
            _clear_4xx(await api.post(f"/v1/volumes/{ref}/snapshots", json={}), 404, 422)
            _clear_4xx(await api.delete(f"/v1/volumes/x/snapshots/{ref}"), 404, 422)
        sizes: list[object] = [10**30, -GIB, 1e30, 0.5, "1G", 512, 16 * MIB + 1]
        for bad in sizes:
            r = await api.post("/v1/volumes", json={"name": "big", "size_bytes": bad})
            _clear_4xx(r, 400, 422)
        # Beyond every node's pool: refused as no capacity (not a 500, and no volume left).
        r = await api.post("/v1/volumes", json={"name": "big", "size_bytes": 8 << 40})
        assert r.status_code == 503 and r.json()["title"] == "No capacity", r.text
        r = await api.post("/v1/volumes/x/extend", json={"size_bytes": 8 << 40})
        assert r.status_code == 503 and r.json()["title"] == "No capacity", r.text
        assert [v["name"] for v in (await api.get("/v1/volumes")).json()["items"]] == ["x"]
        assert (await api.post("/v1/volumes/x/snapshots", json={"name": "ok"})).status_code == 201
        assert (await api.delete("/v1/volumes/x")).status_code == 204
    async with AsyncClient(ctl.url, ctl.token, project=project) as c:
        for text in ("1e30", "-1G", "0.5K", "lots", "1e30G"):
            with pytest.raises(Invalid):
                await c.volumes.create("big", text)
        with pytest.raises(NoCapacity):
            await c.volumes.create("big", "10T")


async def test_a_node_makes_its_pool_on_its_first_volume_only(
    busybox_rootfs: Path, postgres_url: str
) -> None:
    """On a fresh `hutch up` (the module's may have made its pool already)."""
    with running_controller(busybox_rootfs, {"HUTCH_DATABASE_URL": postgres_url}) as ctl:
        async with AsyncClient(ctl.url, ctl.token, project=new_project(ctl, "av")) as vc:
            root = ctl.state_dir / "node" / "volumes"
            with pytest.raises(NoCapacity):  # the node was asked what it could hold
                await vc.volumes.create("huge", "8T")
            assert not (root / "pool.xfs").exists() and not _loops_of(root)
            await vc.volumes.create("first", "64M")
            assert (root / "pool.xfs").exists() and _loops_of(root)
            await vc.volumes.delete("first")


def _loops_of(root: Path) -> str:
    return subprocess.run(
        ["losetup", "-j", str(root / "pool.xfs")], capture_output=True, text=True, check=False
    ).stdout
