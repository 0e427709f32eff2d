"""The store contract (`hutch.store.base`), on SQLite and PostgreSQL alike."""

import asyncio
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from hutch.model.errors import Conflict, Invalid, NotFound
from hutch.model.machine import (
    Capacity,
    Desired,
    GroupPolicy,
    MachineLine,
    MachineState,
    NodeState,
    RestartPolicy,
    Strategy,
    VolumeAttach,
)
from hutch.model.snapshot import MachineSnapshot, SnapshotState
from hutch.model.tenancy import Quota, Role, Session, Usage
from hutch.model.usage import Hour, UsageMark, UsageRecord, UsageTotal
from hutch.store.base import MAX_PAGE, Claim, NewEvent, Pending
from hutch.store.sql import SqlStore
from hutch.store.sql.usage import MAX_BATCH
from tests.store import factories as f

# -- projects -------------------------------------------------------------------------------------


async def test_project_round_trip(store: SqlStore) -> None:
    a = f.project("alpha", Quota(machines=3, vcpus=8, memory_mib=4096, disk_mib=None))
    b = f.project("beta")
    async with store.write() as tx:
        await tx.projects.create(b)
        await tx.projects.create(a)
    async with store.read() as tx:
        assert await tx.projects.get(a.id) == a
        assert await tx.projects.by_name("beta") == b
        assert await tx.projects.list() == [a, b]  # by name


async def test_project_conflicts_and_not_found(store: SqlStore) -> None:
    a = f.project("alpha")
    async with store.write() as tx:
        await tx.projects.create(a)
        assert await tx.projects.lock(a.id) == a  # the row, held until the commit
        with pytest.raises(Conflict, match="project named 'alpha' already exists"):
            await tx.projects.create(f.project("alpha"))
        with pytest.raises(Conflict, match="id"):
            await tx.projects.create(replace(a, name="other"))
        # The refusal did not spoil the transaction (a savepoint on PostgreSQL).
        await tx.projects.create(f.project("gamma"))
        with pytest.raises(NotFound, match="project 'nope' not found"):
            await tx.projects.get("nope")
        with pytest.raises(NotFound):
            await tx.projects.by_name("nope")
        with pytest.raises(NotFound):
            await tx.projects.set_quota("nope", Quota())
        with pytest.raises(NotFound):
            await tx.projects.lock("nope")
        with pytest.raises(NotFound):
            await tx.projects.delete("nope")
    async with store.read() as tx:
        assert [p.name for p in await tx.projects.list()] == ["alpha", "gamma"]


async def test_set_quota(store: SqlStore) -> None:
    a = f.project()
    async with store.write() as tx:
        await tx.projects.create(a)
        updated = await tx.projects.set_quota(a.id, Quota(machines=5, disk_mib=100))
    assert updated == replace(a, quota=Quota(machines=5, disk_mib=100))
    async with store.read() as tx:
        assert await tx.projects.get(a.id) == updated


async def test_project_delete(store: SqlStore) -> None:
    a, other = f.project(), f.project()
    m = f.machine(a.id)
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.projects.create(other)
        await tx.machines.create(m)
        await tx.tokens.create(f.token(a.id), "hash-a")
        await tx.events.append([NewEvent(a.id, "machine.created", m.id, "created", "", f.now())])
        await tx.events.append([NewEvent(other.id, "machine.created", "x", "created", "", f.now())])
    async with store.write() as tx:
        with pytest.raises(Conflict, match="1 machine"):
            await tx.projects.delete(a.id)
    async with store.write() as tx:
        await tx.machines.update(replace(m, state=MachineState.DESTROYED))
        await tx.projects.delete(a.id)  # a destroyed machine does not hold it
    async with store.read() as tx:
        with pytest.raises(NotFound):
            await tx.projects.get(a.id)
        with pytest.raises(NotFound):
            await tx.machines.by_id(m.id)
        assert await tx.tokens.by_hash("hash-a") is None
        assert await tx.events.since(a.id, 0) == []
        assert len(await tx.events.since(other.id, 0)) == 1
        assert await tx.projects.list() == [other]


# -- tokens ---------------------------------------------------------------------------------------


async def test_tokens(store: SqlStore) -> None:
    a = f.project()
    member = f.token(a.id, Role.MEMBER, expires_at=f.T0 + 3600)
    reader = f.token(a.id, Role.READER)
    admin = f.token(None, Role.ADMIN)
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.tokens.create(member, "h-member")
        await tx.tokens.create(reader, "h-reader")
        await tx.tokens.create(admin, "h-admin")
    async with store.read() as tx:
        assert await tx.tokens.by_hash("h-member") == member
        assert await tx.tokens.by_hash("h-admin") == admin
        assert await tx.tokens.by_hash("h-unknown") is None
        assert await tx.tokens.get(reader.id) == reader
        assert await tx.tokens.list(a.id) == [member, reader]
        assert await tx.tokens.list(None) == [admin]  # the system tokens
        assert await tx.tokens.list("other") == []
        with pytest.raises(NotFound):
            await tx.tokens.get("nope")


async def test_token_conflicts_and_revoke(store: SqlStore) -> None:
    a = f.project()
    tok = f.token(a.id)
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.tokens.create(tok, "h1")
        with pytest.raises(Conflict, match="secret"):
            await tx.tokens.create(f.token(a.id), "h1")
        with pytest.raises(Conflict, match="id"):
            await tx.tokens.create(tok, "h2")
        with pytest.raises(NotFound, match="project 'nope'"):
            await tx.tokens.create(f.token("nope"), "h3")
        revoked = await tx.tokens.revoke(tok.id, 100.0)
        again = await tx.tokens.revoke(tok.id, 200.0)
        with pytest.raises(NotFound):
            await tx.tokens.revoke("nope", 1.0)
    assert revoked == replace(tok, revoked_at=100.0)
    assert again.revoked_at == 100.0  # the first revocation stands
    async with store.read() as tx:
        found = await tx.tokens.by_hash("h1")
        assert found is not None
        assert not found.usable(150.0)


async def test_sessions(store: SqlStore) -> None:
    a = f.project()
    tok, other = f.token(a.id), f.token(a.id)
    s1 = Session("s1", tok.id, "c1", f.T0, f.T0 + 100)
    s2 = Session("s2", tok.id, "c2", f.T0, f.T0 + 200)
    s3 = Session("s3", other.id, "c3", f.T0, f.T0 + 300)
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.tokens.create(tok, "h1")
        await tx.tokens.create(other, "h2")
        for s in (s1, s2, s3):
            await tx.sessions.create(s)
        with pytest.raises(Conflict):
            await tx.sessions.create(s1)
        with pytest.raises(NotFound, match="token 'nope'"):
            await tx.sessions.create(replace(s1, id="s4", token_id="nope"))
        await tx.sessions.choose("s2", a.id)
    async with store.read() as tx:
        assert await tx.sessions.get("s1") == s1
        assert await tx.sessions.get("s2") == replace(s2, project_id=a.id)
        assert await tx.sessions.get("nope") is None
    async with store.write() as tx:
        assert await tx.sessions.prune(f.T0 + 100) == 1  # s1 expired then
        await tx.sessions.delete("s2")
        await tx.sessions.delete("s2")  # signing out twice is no error
        assert await tx.sessions.end_token(other.id) == 1
        await tx.sessions.create(replace(s1, expires_at=f.T0 + 900))
    async with store.read() as tx:
        assert [await tx.sessions.get(s) for s in ("s2", "s3")] == [None, None]
    async with store.write() as tx:
        await tx.projects.delete(a.id)  # its tokens go, and their sessions
    async with store.read() as tx:
        assert await tx.sessions.get("s1") is None


# -- machines -------------------------------------------------------------------------------------


async def test_machine_round_trip(store: SqlStore) -> None:
    a = f.project()
    n = f.node()
    full = f.machine(
        a.id,
        "web",
        command=("sh", "-c", "echo hi"),
        entrypoint=(),
        env=("A=1", "B=two words"),
        workdir="/srv",
        user="1000:1000",
        cpus=2,
        memory_mib=512,
        disk_mib=64,
        runtime="container",
        restart=RestartPolicy.ON_FAILURE,
        labels={"app": "web", "example.com/tier": "front"},
        auto_destroy=True,
        state=MachineState.EXITED,
        desired=Desired.STOPPED,
        node_id=n.id,
        generation=3,
        exit_code=137,
        error="killed",
        oom_killed=True,
        restarts=2,
        started_at=f.T0 + 1.25,
        finished_at=f.T0 + 2.5,
    )
    bare = f.machine(a.id, "bare")  # command None: the image's; distinct from ()
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.nodes.create(n, "cred")
        await tx.machines.create(full)
        await tx.machines.create(bare)
    async with store.read() as tx:
        assert await tx.machines.get(a.id, full.id) == full
        assert await tx.machines.get(a.id, "web") == full
        assert await tx.machines.by_id(full.id) == full
        got = await tx.machines.get(a.id, "bare")
        assert got == bare
        assert got.spec.command is None and got.spec.entrypoint is None


async def test_machine_create_refusals(store: SqlStore) -> None:
    a, b = f.project(), f.project()
    m = f.machine(a.id, "web")
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.projects.create(b)
        await tx.machines.create(m)
        with pytest.raises(Conflict, match="already has a machine named 'web'"):
            await tx.machines.create(f.machine(a.id, "web"))
        with pytest.raises(Conflict, match="id"):
            await tx.machines.create(replace(m, name="other"))
        with pytest.raises(NotFound, match="project 'nope'"):
            await tx.machines.create(f.machine("nope"))
        with pytest.raises(NotFound, match="node 'nope'"):
            await tx.machines.create(f.machine(a.id, node_id="nope"))
        await tx.machines.create(f.machine(b.id, "web"))  # names are per project


async def test_bulk_creates_write_what_create_writes(store: SqlStore) -> None:
    a = f.project()
    nodes = [f.node("node-b"), f.node("node-a", labels={}, overhead_mib={}, domain="d1")]
    machines = [
        f.machine(a.id, "web", command=("sh", "-c", "x"), env=("A=1",), labels={"app": "web"},
                  group="g", group_policy=GroupPolicy.ANTI_AFFINITY, node_id=nodes[0].id),
        f.machine(a.id, "bare"),
    ]  # fmt: skip
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.nodes.create_many([])
        await tx.machines.create_many([])
        await tx.nodes.create_many([(n, f"cred-{n.name}") for n in nodes])
        await tx.machines.create_many(machines)
    async with store.read() as tx:
        assert await tx.nodes.list() == nodes[::-1]  # by name
        assert await tx.nodes.by_credential("cred-node-a") == nodes[1]
        assert [await tx.machines.by_id(m.id) for m in machines] == machines
    async with store.write() as tx:  # pending() locks on PostgreSQL
        assert [m.id for m in await tx.machines.pending(10)] == [machines[1].id]
    # One broken constraint refuses the whole batch.
    with pytest.raises(Conflict):
        async with store.write() as tx:
            await tx.machines.create_many([f.machine(a.id, "new"), f.machine(a.id, "web")])
    with pytest.raises(Conflict):
        async with store.write() as tx:
            await tx.nodes.create_many([(f.node("node-c"), "cred-c"), (f.node(), "cred-node-a")])
    async with store.read() as tx:
        assert len(await tx.nodes.list()) == 2
        with pytest.raises(NotFound):
            await tx.machines.get(a.id, "new")


async def test_tenant_scoping(store: SqlStore) -> None:
    a, b = f.project(), f.project()
    m = f.machine(a.id, "secret-app", cpus=2)
    async with store.write() as tx:
        for p in (a, b):
            await tx.projects.create(p)
        await tx.machines.create(m)
    async with store.write() as tx:
        for ref in (m.id, m.name):
            with pytest.raises(NotFound) as raised:
                await tx.machines.get(b.id, ref)
            assert a.id not in raised.value.message
        assert await tx.machines.list(b.id) == ([], None)
        assert await tx.machines.usage(b.id) == Usage()
        with pytest.raises(NotFound):
            await tx.machines.update(replace(m, project_id=b.id, state=MachineState.RUNNING))
    async with store.read() as tx:
        assert await tx.machines.get(a.id, m.id) == m  # untouched
        assert await tx.machines.usage(a.id) == Usage(1, 2, 128, 64)


async def test_name_reuse_after_destroy(store: SqlStore) -> None:
    a = f.project()
    old = f.machine(a.id, "web")
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.machines.create(old)
        old = await tx.machines.update(replace(old, state=MachineState.DESTROYED))
        new = f.machine(a.id, "web")
        await tx.machines.create(new)
        third = f.machine(a.id, "web")
        with pytest.raises(Conflict):
            await tx.machines.create(third)
    async with store.write() as tx:
        assert await tx.machines.get(a.id, "web") == new  # the live one wins the name
        assert await tx.machines.get(a.id, old.id) == old
        with pytest.raises(Conflict, match="named 'web'"):
            await tx.machines.update(replace(old, state=MachineState.CREATED))
        # The refusal left the transaction usable.
        new = await tx.machines.update(replace(new, state=MachineState.DESTROYED))
        await tx.machines.create(third)  # two destroyed "web"s and one live one
    async with store.read() as tx:
        assert await tx.machines.get(a.id, "web") == third
        states = [m.state for m in (await tx.machines.list(a.id))[0]]
        assert states == [MachineState.DESTROYED, MachineState.DESTROYED, MachineState.CREATED]


async def test_get_by_name_prefers_newest_destroyed(store: SqlStore) -> None:
    a = f.project()
    async with store.write() as tx:
        await tx.projects.create(a)
        first = f.machine(a.id, "job", state=MachineState.DESTROYED)
        second = f.machine(a.id, "job", state=MachineState.DESTROYED)
        await tx.machines.create(first)
        await tx.machines.create(second)
        assert await tx.machines.get(a.id, "job") == second


async def test_update_compare_and_set(store: SqlStore) -> None:
    a = f.project()
    m = f.machine(a.id)
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.machines.create(m)
    async with store.write() as tx:
        v2 = await tx.machines.update(replace(m, state=MachineState.STARTING, updated_at=5.0))
        assert v2 == replace(m, state=MachineState.STARTING, updated_at=5.0, version=2)
        with pytest.raises(Conflict, match="changed by someone else"):
            await tx.machines.update(replace(m, state=MachineState.FAILED))  # version 1: stale
        v3 = await tx.machines.update(replace(v2, state=MachineState.RUNNING, name="renamed"))
        assert v3.version == 3 and v3.name == "renamed"
        with pytest.raises(NotFound):
            await tx.machines.update(f.machine(a.id))
    async with store.read() as tx:
        assert await tx.machines.get(a.id, "renamed") == v3


async def test_list_pages_in_creation_order(store: SqlStore) -> None:
    a = f.project()
    made = [f.machine(a.id, f"m{i}") for i in range(7)]
    async with store.write() as tx:
        await tx.projects.create(a)
        for m in reversed(made):  # insertion order must not matter
            await tx.machines.create(m)
    pages = []
    cursor = None
    async with store.read() as tx:
        while True:
            page, cursor = await tx.machines.list(a.id, limit=3, cursor=cursor)
            pages.append([m.name for m in page])
            if cursor is None:
                break
        assert pages == [["m0", "m1", "m2"], ["m3", "m4", "m5"], ["m6"]]
        page, cursor = await tx.machines.list(a.id, limit=7)
        assert page == made and cursor is None  # exactly one page: no empty page after it


async def test_list_cursor_breaks_ties_by_id(store: SqlStore) -> None:
    a = f.project()
    same = [f.machine(a.id, f"m{i}", created_at=f.T0, id=f"m-{i:02}") for i in range(5)]
    async with store.write() as tx:
        await tx.projects.create(a)
        for m in same:
            await tx.machines.create(m)
    seen: list[str] = []
    cursor = None
    async with store.read() as tx:
        while True:
            page, cursor = await tx.machines.list(a.id, limit=2, cursor=cursor)
            seen += [m.id for m in page]
            if cursor is None:
                break
    assert seen == [m.id for m in same]


async def test_list_filters(store: SqlStore) -> None:
    a = f.project()
    web1 = f.machine(a.id, labels={"app": "web", "example.com/tier": "front"})
    web2 = f.machine(a.id, labels={"app": "web"}, state=MachineState.RUNNING)
    db = f.machine(a.id, labels={"app": "db", "example.com/tier": "back"})
    gone = f.machine(a.id, labels={"app": "web"}, state=MachineState.DESTROYED)
    async with store.write() as tx:
        await tx.projects.create(a)
        for m in (web1, web2, db, gone):
            await tx.machines.create(m)
    async with store.read() as tx:

        async def ids(**kw: object) -> list[str]:
            page, _ = await tx.machines.list(a.id, **kw)  # type: ignore[arg-type]
            return [m.id for m in page]

        assert await ids(labels={"app": "web"}) == [web1.id, web2.id, gone.id]
        assert await ids(labels={"app": "web", "example.com/tier": "front"}) == [web1.id]
        assert await ids(labels={"example.com/tier": "back"}) == [db.id]
        assert await ids(labels={"app": "nope"}) == []
        assert await ids(labels={"missing": "x"}) == []
        assert await ids(states=[MachineState.CREATED]) == [web1.id, db.id]
        running_or_gone = [MachineState.RUNNING, MachineState.DESTROYED]
        assert await ids(states=running_or_gone) == [web2.id, gone.id]
        assert await ids(states=[MachineState.CREATED], labels={"app": "web"}) == [web1.id]
        # Filters and pages together: the cursor continues the filtered listing.
        page, cursor = await tx.machines.list(a.id, labels={"app": "web"}, limit=2)
        assert [m.id for m in page] == [web1.id, web2.id]
        page, cursor = await tx.machines.list(a.id, labels={"app": "web"}, cursor=cursor)
        assert [m.id for m in page] == [gone.id] and cursor is None


async def test_lines(store: SqlStore) -> None:
    a, b = f.project(), f.project()
    one = f.machine(a.id, cpus=2, memory_mib=512)
    two = f.machine(a.id, state=MachineState.RUNNING)
    gone = f.machine(a.id, state=MachineState.DESTROYED)
    pooled = f.machine(a.id, pool="pl-1")
    theirs = f.machine(b.id)
    async with store.write() as tx:
        for p in (a, b):
            await tx.projects.create(p)
        for m in (one, two, gone, pooled, theirs):
            await tx.machines.create(m)
    kept = [s for s in MachineState if s is not MachineState.DESTROYED]
    async with store.read() as tx:
        assert await tx.machines.lines(a.id, kept) == [MachineLine.of(one), MachineLine.of(two)]
        assert await tx.machines.lines(a.id, [MachineState.RUNNING]) == [MachineLine.of(two)]
    assert MachineLine.of(one).cpus == 2 and MachineLine.of(one).memory_mib == 512


async def test_list_limits_and_bad_cursor(store: SqlStore) -> None:
    a = f.project()
    async with store.write() as tx:
        await tx.projects.create(a)
        for i in range(MAX_PAGE + 5):
            await tx.machines.create(f.machine(a.id, f"m{i}"))
    async with store.read() as tx:
        page, cursor = await tx.machines.list(a.id, limit=10_000)
        assert len(page) == MAX_PAGE and cursor is not None
        rest, end = await tx.machines.list(a.id, limit=10_000, cursor=cursor)
        assert len(rest) == 5 and end is None
        for bad in ("garbage!", "bm90IGpzb24=", "WzEsMiwzXQ=="):  # not base64, not JSON, [1,2,3]
            with pytest.raises(Invalid, match="cursor"):
                await tx.machines.list(a.id, cursor=bad)
        with pytest.raises(Invalid, match="limit"):
            await tx.machines.list(a.id, limit=0)


async def test_purge_takes_old_destroyed_machines_and_their_events(store: SqlStore) -> None:
    a, b = f.project(), f.project()
    gone, cutoff = MachineState.DESTROYED, 1000.0
    old = [f.machine(p.id, state=gone, updated_at=900.0 + i) for i, p in enumerate((a, b, a))]
    recent = f.machine(a.id, state=gone, updated_at=cutoff)  # not before the cut-off
    ended = f.machine(a.id, state=MachineState.EXITED, updated_at=1.0)  # old, not destroyed
    running = f.machine(b.id, state=MachineState.RUNNING, updated_at=1.0)
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.projects.create(b)
        for m in (*old, recent, ended, running):
            await tx.machines.create(m)
            await tx.events.append(
                [NewEvent(m.project_id, "machine.state", m.id, m.state, "", 1.0)]
            )
        # An event of another kind that happens to carry the id stays.
        await tx.events.append([NewEvent(a.id, "note", old[0].id, "", "", 2.0)])
    async with store.write() as tx:
        assert await tx.machines.purge(cutoff, limit=2) == 2  # the oldest two
    async with store.read() as tx:
        with pytest.raises(NotFound):
            await tx.machines.by_id(old[0].id)
        with pytest.raises(NotFound):
            await tx.machines.by_id(old[1].id)
        assert await tx.machines.by_id(old[2].id) == old[2]
    async with store.write() as tx:
        assert await tx.machines.purge(cutoff, limit=2) == 1
        assert await tx.machines.purge(cutoff, limit=2) == 0
    async with store.read() as tx:
        assert (await tx.machines.list(a.id))[0] == [recent, ended]
        assert (await tx.machines.list(b.id))[0] == [running]
        kept = [(e.kind, e.object_id) for e in await tx.events.since(a.id, 0)]
        assert kept == [
            ("machine.state", recent.id),
            ("machine.state", ended.id),
            ("note", old[0].id),
        ]
        assert [e.object_id for e in await tx.events.since(b.id, 0)] == [running.id]
        assert (await tx.events.last(a.id), await tx.events.last(b.id)) == (
            5,
            2,
        )  # numbers not reused


async def test_usage(store: SqlStore) -> None:
    a, b, n = f.project(), f.project(), f.node()
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.projects.create(b)
        await tx.nodes.create(n, "cred")
        assert await tx.machines.usage(a.id) == Usage()
        await tx.machines.create(f.machine(a.id, cpus=2, memory_mib=512, disk_mib=1000))
        await tx.machines.create(f.machine(a.id, cpus=1, memory_mib=512))  # scratch: 256
        await tx.machines.create(f.machine(a.id, cpus=1, memory_mib=20))  # scratch: at least 16
        # Ended machines hold nothing on a node, so nothing of the quota either; nor does one
        # created not to start, until it starts.
        for ended in (MachineState.EXITED, MachineState.FAILED, MachineState.LOST):
            await tx.machines.create(f.machine(a.id, cpus=4, state=ended))
        await tx.machines.create(f.machine(a.id, cpus=8, state=MachineState.DESTROYED))
        await tx.machines.create(f.machine(a.id, cpus=8, desired=Desired.STOPPED))
        await tx.machines.create(f.machine(a.id, cpus=1, state=MachineState.STOPPING, node_id=n.id))
        await tx.machines.create(f.machine(b.id, cpus=16))
        assert await tx.machines.usage(a.id) == Usage(
            machines=4, vcpus=5, memory_mib=512 + 512 + 20 + 128, disk_mib=1000 + 256 + 16 + 64
        )
        # A suspended machine holds its disk and its place in the count, no CPU or memory: its
        # memory is saved on its node's disk, and counted there.
        await tx.machines.create(
            f.machine(a.id, cpus=2, memory_mib=512, state=MachineState.SUSPENDED, node_id=n.id,
                      desired=Desired.SUSPENDED)
        )  # fmt: skip
        assert await tx.machines.usage(a.id) == Usage(
            machines=5, vcpus=5, memory_mib=512 + 512 + 20 + 128,
            disk_mib=1000 + 256 + 16 + 64 + 256 + 512,
        )  # fmt: skip


async def test_on_node_and_by_id(store: SqlStore) -> None:
    a, b = f.project(), f.project()
    n1, n2 = f.node(), f.node()
    async with store.write() as tx:
        for p in (a, b):
            await tx.projects.create(p)
        await tx.nodes.create(n1, "c1")
        await tx.nodes.create(n2, "c2")
        m1 = f.machine(a.id, node_id=n1.id, state=MachineState.RUNNING)
        m2 = f.machine(b.id, node_id=n1.id, state=MachineState.EXITED)
        gone = f.machine(a.id, node_id=n1.id, state=MachineState.DESTROYED)
        elsewhere = f.machine(a.id, node_id=n2.id)
        unplaced = f.machine(a.id)
        for m in (m1, m2, gone, elsewhere, unplaced):
            await tx.machines.create(m)
    async with store.read() as tx:
        assert await tx.machines.on_node(n1.id) == [m1, m2]  # every project's, not destroyed
        assert await tx.machines.on_node(n2.id) == [elsewhere]
        assert await tx.machines.on_node("nope") == []
        assert await tx.machines.by_id(m2.id) == m2
        with pytest.raises(NotFound):
            await tx.machines.by_id("nope")


async def test_pending_machines_are_placed_once(store: SqlStore) -> None:
    p, n = f.project(), f.node()
    waiting = [f.machine(p.id, created_at=100.0 + i) for i in range(5)]
    placed = f.machine(p.id, node_id=n.id, created_at=1.0)
    stopped = f.machine(p.id, desired=Desired.STOPPED, created_at=2.0)
    failed = f.machine(p.id, state=MachineState.FAILED, created_at=3.0)
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(n, "cred")
        for m in [*reversed(waiting), placed, stopped, failed]:
            await tx.machines.create(m)
        first = await tx.machines.pending(3)
        assert [m.id for m in first] == [m.id for m in waiting[:3]]  # oldest first
        rest = await tx.machines.pending(3, (first[-1].created_at, first[-1].id))
        assert [m.id for m in rest] == [m.id for m in waiting[3:]]
        await tx.machines.place([(waiting[0].id, n.id), (waiting[1].id, n.id)], 500.0)
        # Placing a machine that has a node already changes nothing.
        await tx.machines.place([(placed.id, "elsewhere")], 500.0)
    async with store.read() as tx:
        got = await tx.machines.by_id(waiting[0].id)
        assert (got.node_id, got.updated_at, got.version) == (n.id, 500.0, 2)
        assert (await tx.machines.by_id(placed.id)).node_id == n.id
    async with store.write() as tx:
        assert [m.id for m in await tx.machines.pending(10)] == [m.id for m in waiting[2:]]


async def test_pending_reads_what_placement_asks(store: SqlStore) -> None:
    p = f.project()
    m = f.machine(
        p.id,
        cpus=2,
        memory_mib=768,
        disk_mib=2048,
        runtime="container",
        constraints={"zone": "b"},
        strategy=Strategy.PACK,
        group="db",
        group_policy=GroupPolicy.ANTI_AFFINITY,
        volumes=(VolumeAttach("v-1", "/data"),),
        error="waiting for a node: before",
    )
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.machines.create(m)
        (got,) = await tx.machines.pending(10)
        s = m.spec
        assert got == Pending(
            m.id, p.id, m.created_at, m.error, s.image, 2, 768, s.scratch_mib, "container",
            {"zone": "b"}, Strategy.PACK, "db", GroupPolicy.ANTI_AFFINITY, s.volumes, "",
        )  # fmt: skip
        await tx.machines.still_pending([(m.id, "waiting for a node: now")], 500.0)
    async with store.read() as tx:
        after = await tx.machines.by_id(m.id)
    assert (after.error, after.updated_at, after.version) == ("waiting for a node: now", 500.0, 2)
    assert after.spec == m.spec


async def test_group_members_count_active_machines_by_node(store: SqlStore) -> None:
    p, a, b = f.project(), f.node(), f.node()
    running = MachineState.RUNNING
    members = [
        f.machine(p.id, group="db", node_id=a.id, state=running),
        f.machine(p.id, group="db", node_id=a.id, state=MachineState.STARTING),
        f.machine(p.id, group="db", node_id=b.id, state=running),
        f.machine(p.id, group="db", node_id=b.id, state=MachineState.EXITED),  # not active
        f.machine(p.id, group="db", node_id=b.id, state=running, desired=Desired.DESTROYED),
        f.machine(p.id, group="web", node_id=b.id, state=running),
    ]
    other = f.project()  # its group of the same name is its own
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.projects.create(other)
        for n in (a, b):
            await tx.nodes.create(n, n.id)
        await tx.machines.create(f.machine(other.id, group="db", node_id=a.id, state=running))
        for m in members:
            await tx.machines.create(m)
    async with store.read() as tx:
        assert await tx.machines.group_members(p.id, ["db", "web", "none"]) == {
            "db": {a.id: 2, b.id: 1},
            "web": {b.id: 1},
            "none": {},
        }
        assert await tx.machines.group_members(p.id, []) == {}


async def test_placement_fields_round_trip(store: SqlStore) -> None:
    p = f.project()
    m = f.machine(
        p.id,
        group="db",
        group_policy=GroupPolicy.ANTI_AFFINITY,
        constraints={"zone": "b"},
        strategy=Strategy.PACK,
    )
    async with store.write() as tx:
        await tx.projects.create(p)
        await tx.machines.create(m)
        assert (await tx.projects.set_strategy(p.id, Strategy.PACK)).strategy is Strategy.PACK
        with pytest.raises(NotFound):
            await tx.projects.set_strategy("nope", Strategy.PACK)
    async with store.read() as tx:
        assert await tx.machines.by_id(m.id) == m
        assert (await tx.projects.get(p.id)).strategy is Strategy.PACK


async def test_leases_go_to_one_holder_until_they_expire(store: SqlStore) -> None:
    async with store.write() as tx:
        assert await tx.leases.acquire("leader", "a", 5.0, 100.0) == 1
        assert await tx.leases.acquire("leader", "b", 5.0, 101.0) is None
        assert await tx.leases.acquire("leader", "a", 5.0, 104.0) == 1  # renewed: to 109
        assert await tx.leases.acquire("leader", "b", 5.0, 108.0) is None
        assert await tx.leases.acquire("leader", "b", 5.0, 109.5) == 2  # expired: a new term
        assert await tx.leases.acquire("other", "a", 5.0, 109.5) == 1
        await tx.leases.release("leader", "a")  # not a's any more: no effect
        assert await tx.leases.acquire("leader", "c", 5.0, 110.0) is None  # still b's
        await tx.leases.release("leader", "b")
        assert await tx.leases.acquire("leader", "a", 5.0, 110.0) == 3


# -- nodes ----------------------------------------------------------------------------------------


async def test_nodes(store: SqlStore) -> None:
    n1, n2 = f.node("node-b"), f.node("node-a", labels={}, overhead_mib={})
    async with store.write() as tx:
        await tx.nodes.create(n1, "cred-1")
        await tx.nodes.create(n2, "cred-2")
        with pytest.raises(Conflict, match="named 'node-b'"):
            await tx.nodes.create(f.node("node-b"), "cred-3")
        with pytest.raises(Conflict, match="credential"):
            await tx.nodes.create(f.node(), "cred-1")
        with pytest.raises(Conflict, match="id"):
            await tx.nodes.create(replace(n1, name="node-c"), "cred-4")
    async with store.read() as tx:
        assert await tx.nodes.get(n1.id) == n1
        assert await tx.nodes.list() == [n2, n1]  # by name
        assert await tx.nodes.by_credential("cred-2") == n2
        assert await tx.nodes.by_credential("cred-x") is None
        with pytest.raises(NotFound):
            await tx.nodes.get("nope")


async def test_node_compare_and_set(store: SqlStore) -> None:
    n = f.node()
    async with store.write() as tx:
        await tx.nodes.create(n, "cred")
        assert await tx.nodes.lock(n.id) == n  # the row, held until the commit
        cordoned = await tx.nodes.update(replace(n, cordoned=True, domain="rack-1"))
        assert cordoned == replace(n, cordoned=True, domain="rack-1", version=2)
        with pytest.raises(Conflict, match="changed by someone else"):
            await tx.nodes.update(replace(n, state=NodeState.UNREACHABLE))
        with pytest.raises(NotFound):
            await tx.nodes.update(f.node())
        with pytest.raises(NotFound):
            await tx.nodes.lock("nope")
        assert await tx.nodes.revision(n.id) == 0  # updates do not bump the revision
    async with store.read() as tx:
        assert await tx.nodes.get(n.id) == cordoned
        assert await tx.nodes.by_credential("cred") == cordoned


async def test_node_claims_are_increments_within_a_limit(store: SqlStore) -> None:
    a, b = f.node(allocated=Capacity(1, 100, 10)), f.node()
    limit = Capacity(8, 1000, 100)
    async with store.write() as tx:
        await tx.nodes.create(a, "cred-a")
        await tx.nodes.create(b, "cred-b")
        assert await tx.nodes.claim([]) == set()
        got = await tx.nodes.claim(
            [Claim(a.id, Capacity(2, 400, 40), limit), Claim(b.id, Capacity(1, 1, 1), limit)]
        )
        assert got == {a.id, b.id}
        assert await tx.nodes.claim([Claim(a.id, Capacity(5, 500, 50), limit)]) == {a.id}  # full
        refused = [
            Claim(a.id, Capacity(0, 1, 0), limit),
            Claim(b.id, Capacity(0, 0, 100), limit),  # 1 + 100 > 100
            Claim("nope", Capacity(0, 1, 0), limit),
        ]
        assert await tx.nodes.claim(refused) == set()
        # An update of other fields leaves the allocation to claims and releases.
        node = await tx.nodes.get(a.id)
        assert node.allocated == Capacity(8, 1000, 100)
        await tx.nodes.update(replace(node, allocated=Capacity(0, 0, 0), labels={"x": "y"}))
        await tx.nodes.release(a.id, Capacity(3, 600, 1000))
    async with store.read() as tx:
        assert (await tx.nodes.get(a.id)).allocated == Capacity(5, 400, 0)  # never below zero
        assert (await tx.nodes.get(b.id)).allocated == Capacity(1, 1, 1)


async def test_node_changes_since_a_read(store: SqlStore) -> None:
    a, b, c, same = f.node("a"), f.node("b"), f.node("c"), f.node("same")
    async with store.write() as tx:
        for n in (a, b, c, same):
            await tx.nodes.create(n, f"cred-{n.name}")
    async with store.read() as tx:
        known = {n.id: n for n in await tx.nodes.list()}
        assert await tx.nodes.changed(known) == ([], set())
    d = f.node("d")
    async with store.write() as tx:
        await tx.nodes.update(replace(a, labels={"x": "y"}))  # updated
        await tx.nodes.claim([Claim(b.id, Capacity(1, 100, 0), Capacity(8, 16384, 100_000))])
        await tx.nodes.delete(c.id)
        await tx.nodes.create(d, "cred-d")
    async with store.read() as tx:
        changed, gone = await tx.nodes.changed(known)
        assert sorted(changed, key=lambda n: n.name) == [
            await tx.nodes.get(n.id) for n in (a, b, d)
        ]
        assert gone == {c.id}


async def test_node_revisions_bumped_in_one_go(store: SqlStore) -> None:
    a, b = f.node(), f.node()
    async with store.write() as tx:
        await tx.nodes.create(a, "cred-a")
        await tx.nodes.create(b, "cred-b")
        await tx.nodes.bump_revisions([a.id, a.id, b.id])
        await tx.nodes.bump_revisions([])
        assert (await tx.nodes.revision(a.id), await tx.nodes.revision(b.id)) == (1, 1)


async def test_node_revision(store: SqlStore) -> None:
    n = f.node()
    async with store.write() as tx:
        await tx.nodes.create(n, "cred")
        assert await tx.nodes.revision(n.id) == 0
        await tx.nodes.bump_revisions([n.id])
        await tx.nodes.bump_revisions([n.id, "nope"])  # a node that is gone has nothing to see
        assert await tx.nodes.revision(n.id) == 2
        with pytest.raises(NotFound):
            await tx.nodes.revision("nope")
    async with store.write() as tx:
        await tx.nodes.bump_revisions([n.id])
    async with store.read() as tx:
        assert await tx.nodes.revision(n.id) == 3
        assert (await tx.nodes.get(n.id)).version == 1


# -- events ---------------------------------------------------------------------------------------


async def test_events(store: SqlStore) -> None:
    a, b = f.project(), f.project()
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.projects.create(b)
        [e1] = await tx.events.append(
            [NewEvent(a.id, "machine.created", "m-1", "created", "hello", 10.5)]
        )
        [e2] = await tx.events.append(
            [NewEvent(b.id, "machine.created", "m-2", "created", "", 11.0)]
        )
        [e3] = await tx.events.append([NewEvent(a.id, "machine.state", "m-1", "running", "", 12.0)])
        with pytest.raises(NotFound):
            await tx.events.append([NewEvent("nope", "machine.state", "m-1", "running", "", 12.0)])
    async with store.write() as tx:
        [e4] = await tx.events.append(
            [NewEvent(a.id, "machine.destroyed", "m-1", "destroyed", "", 13.0)]
        )
    assert (e1.id, e3.id, e4.id) == (1, 2, 3)  # numbered in their project: b's e2 is not there
    assert e2.id == 1
    assert (e1.project_id, e1.kind, e1.object_id, e1.state, e1.message, e1.time) == (
        a.id,
        "machine.created",
        "m-1",
        "created",
        "hello",
        10.5,
    )
    async with store.read() as tx:
        assert await tx.events.since(a.id, 0) == [e1, e3, e4]
        assert await tx.events.since(b.id, 0) == [e2]
        assert await tx.events.since(a.id, e1.id) == [e3, e4]
        assert await tx.events.since(a.id, e3.id, limit=1) == [e4]
        assert await tx.events.since(a.id, 0, limit=2) == [e1, e3]
        assert await tx.events.since(a.id, e4.id) == []
        with pytest.raises(Invalid):
            await tx.events.since(a.id, 0, limit=0)
        assert await tx.events.of_object(a.id, "m-1", 10) == [e4, e3, e1]  # newest first
        assert await tx.events.of_object(a.id, "m-1", 2) == [e4, e3]
        assert await tx.events.of_object(a.id, "m-2", 10) == []  # b's m-2 is not a's
        assert (await tx.events.last(a.id), await tx.events.last(b.id)) == (3, 1)
        with pytest.raises(NotFound):
            await tx.events.last("nope")
    c = f.project()
    async with store.write() as tx:
        await tx.projects.create(c)
    async with store.read() as tx:
        assert await tx.events.last(c.id) == 0


async def test_events_appended_many_at_once(store: SqlStore) -> None:
    a, b = f.project(), f.project()
    async with store.write() as tx:
        await tx.projects.create(a)
        await tx.projects.create(b)
        await tx.events.append(
            [
                NewEvent(a.id, "machine.placed", f"m-{i}", "created", "on node x", 5.0)
                for i in range(3)
            ]
        )
        await tx.events.append([])
        with pytest.raises(NotFound):
            await tx.events.append([NewEvent("nope", "k", "m", "s", "", 1.0)])
        await tx.events.append(
            [NewEvent(p, "machine.placed", "m-x", "created", "", 6.0) for p in (b.id, a.id, b.id)]
        )
    async with store.read() as tx:
        got = await tx.events.since(a.id, 0)
        in_b = await tx.events.since(b.id, 0)
    assert [(e.object_id, e.kind) for e in got[:3]] == [
        (f"m-{i}", "machine.placed") for i in range(3)
    ]
    assert [e.id for e in got] == [1, 2, 3, 4] and [e.id for e in in_b] == [1, 2]


# -- transactions ---------------------------------------------------------------------------------


async def test_read_transactions_cannot_write(store: SqlStore) -> None:
    with pytest.raises(RuntimeError, match=r"store\.write"):
        async with store.read() as tx:
            await tx.projects.create(f.project())
    async with store.read() as tx:
        assert await tx.projects.list() == []


async def test_failed_block_leaves_nothing(store: SqlStore) -> None:
    a = f.project()
    with pytest.raises(ZeroDivisionError):
        async with store.write() as tx:
            await tx.projects.create(a)
            await tx.machines.create(f.machine(a.id))
            await tx.events.append([NewEvent(a.id, "machine.created", "m", "created", "", 1.0)])
            _ = 1 / 0
    async with store.write() as tx:
        assert await tx.projects.list() == []
        # The same project can be created now: nothing of the first attempt is left.
        await tx.projects.create(a)
        [event] = await tx.events.append(
            [NewEvent(a.id, "machine.created", "m", "created", "", 1.0)]
        )
    async with store.read() as tx:
        assert await tx.events.since(a.id, 0) == [event]


# -- machine snapshots ----------------------------------------------------------------------------


async def test_machine_snapshots(store: SqlStore) -> None:
    """By id or name within the project only, names unique per project, the live machines
    that continue from one, and the project and node they hold on to."""
    a, b, n = f.project(), f.project(), f.node()
    snap = MachineSnapshot(
        id=f.uid("s"), project_id=a.id, name="tmpl", machine_id=f.uid("m"), node_id=n.id,
        image="busybox", image_digest="sha256:" + "b" * 64, cpus=1, memory_mib=256, disk_mib=0,
        runtime="microvm", command=None, entrypoint=("sh", "-c"), env=("A=1",), workdir="/w",
        user="1:1", networks=("net-1",), size_bytes=0, state=SnapshotState.CREATING,
        created_at=f.now(),
    )  # fmt: skip
    async with store.write() as tx:
        for p in (a, b):
            await tx.projects.create(p)
        await tx.nodes.create(n, "cred")
        await tx.snapshots.create(snap)
        with pytest.raises(Conflict):
            await tx.snapshots.create(replace(snap, id=f.uid("s")))
        await tx.snapshots.create(replace(snap, id=f.uid("s"), project_id=b.id))
        ready = await tx.snapshots.update(replace(snap, size_bytes=5, state=SnapshotState.READY))
        clone = f.machine(a.id, from_snapshot=snap.id, node_id=n.id)
        await tx.machines.create(clone)
        await tx.machines.create(
            f.machine(a.id, from_snapshot=snap.id, state=MachineState.DESTROYED)
        )
    async with store.read() as tx:
        assert await tx.snapshots.get(a.id, "tmpl") == ready == await tx.snapshots.by_id(snap.id)
        assert await tx.snapshots.get(a.id, snap.id) == ready
        with pytest.raises(NotFound):
            await tx.snapshots.get(b.id, snap.id)
        assert [s.id for s in await tx.snapshots.list(a.id)] == [snap.id]
        assert await tx.snapshots.clones(snap.id) == [clone.name]
        assert (await tx.machines.by_id(clone.id)).spec.from_snapshot == snap.id
    async with store.write() as tx:
        await tx.machines.update(replace(clone, state=MachineState.DESTROYED))
        assert await tx.snapshots.clones(snap.id) == []
    with pytest.raises(Conflict, match="machine snapshot"):
        async with store.write() as tx:
            await tx.nodes.delete(n.id)
    with pytest.raises(Conflict, match="machine snapshot"):
        async with store.write() as tx:
            await tx.projects.delete(a.id)
    async with store.write() as tx:
        await tx.snapshots.delete(snap.id)
        assert await tx.snapshots.list(a.id) == []


# -- the usage ledger -----------------------------------------------------------------------------

DAY = 86_400.0


def _usage(key: str, project_id: str, subject: str, start: float, **more: Any) -> UsageRecord:
    return UsageRecord(key, project_id, subject, start, start + 10, **more)


async def test_usage_ledger(store: SqlStore) -> None:
    """Records added once by key (a batch larger than one statement, a resend, a batch mixing
    both), exact decimal sums per project by machine, label and day, pages in the order added,
    and marks held and moved on."""
    a, b = f.uid("p"), f.uid("p")
    day0 = 20_000 * DAY  # 2024-10-04
    many = [
        _usage(f"m:x:1:{i}", a, "m-x", day0 + i, machine_id="m-x", labels={"team": "red"},
               vcpu_seconds=Decimal("0.1"), cpu_seconds=0.05, egress_bytes=3)
        for i in range(MAX_BATCH + 5)
    ]  # fmt: skip
    other = [
        _usage("m:y:1:1", a, "m-y", day0 + DAY, machine_id="m-y",
               labels={"team": "blue", "env": "prod"}, memory_gib_seconds=0.25, starts=1),
        _usage("s:v:1", a, "v-1", day0 + DAY + 5, storage_gib_hours=Decimal("1.5")),
        _usage("m:z:1:1", b, "m-z", day0, machine_id="m-z", vcpu_seconds=7),
    ]  # fmt: skip
    async with store.write() as tx:
        assert await tx.usage.add(many) == len(many)
        assert await tx.usage.add([many[0], *other, many[1]]) == 3
        assert await tx.usage.add(many[:3]) == 0
    async with store.read() as tx:
        [total] = await tx.usage.totals(a)
        assert total == UsageTotal(
            a, "", vcpu_seconds=Decimal("100.5"), cpu_seconds=Decimal("50.25"),
            memory_gib_seconds=Decimal("0.25"), storage_gib_hours=Decimal("1.5"),
            egress_bytes=3 * 1005, starts=1, records=1007,
        )  # fmt: skip
        assert [(t.project_id, t.records) for t in await tx.usage.totals(None)] == sorted(
            [(a, 1007), (b, 1)]
        )
        by_machine = {t.group: t.records for t in await tx.usage.totals(a, by="machine")}
        assert by_machine == {"m-x": 1005, "m-y": 1, "v-1": 1}
        by_label = {t.group: t.records for t in await tx.usage.totals(a, by="label")}
        assert by_label == {"team=red": 1005, "team=blue": 1, "env=prod": 1, "": 1}
        by_day = await tx.usage.totals(a, by="day")
        assert [(t.group, t.records) for t in by_day] == [("2024-10-04", 1005), ("2024-10-05", 2)]
        # Since is inclusive, until exclusive, both on the records' starts.
        [later] = await tx.usage.totals(a, since=day0 + 1000, until=day0 + DAY + 5)
        assert later.records == 6 and later.memory_gib_seconds == Decimal("0.25")
        assert await tx.usage.totals(a, since=day0 + 2 * DAY) == []
        assert await tx.usage.totals(f.uid("p")) == []
        # Pages in the order added, within the project and interval.
        keys, cursor = [], None
        while True:
            page, cursor = await tx.usage.records(a, since=day0 + 990, cursor=cursor, limit=7)
            keys += [r.key for r in page]
            if cursor is None:
                break
        assert keys == [r.key for r in many[990:]] + ["m:y:1:1", "s:v:1"]
        [first], _ = await tx.usage.records(a, limit=1)
        assert replace(first, id=0) == many[0] and first.id > 0
        [z], none = await tx.usage.records(b)
        assert z.vcpu_seconds == 7 and z.labels == {} and none is None
        for bad in ("nope", "9" * 400, "-1", "٣"):  # a number no id column holds is refused too
            with pytest.raises(Invalid, match="cursor"):
                await tx.usage.records(a, cursor=bad)
        with pytest.raises(Invalid, match="by machine, label or day"):
            await tx.usage.totals(a, by="week")  # type: ignore[arg-type]
    async with store.write() as tx:
        marks = await tx.usage.marks([("m-x", 2), ("m-x", 1), ("m-x", 2)])
        assert marks == {("m-x", 1): UsageMark("m-x", 1), ("m-x", 2): UsageMark("m-x", 2)}
        moved = replace(marks["m-x", 1], seq=4, time=5.0, running_s=3.5, cpu_s=1.25,
                        egress_bytes=9, ended=True)  # fmt: skip
        await tx.usage.set_marks([moved])
    async with store.write() as tx:
        assert await tx.usage.marks([("m-x", 1)]) == {("m-x", 1): moved}
        # Marks live as long as their machine: "m-x" is none (purged), `y` is one.
        p = f.project()
        await tx.projects.create(p)
        y = f.machine(p.id).id
        await tx.machines.create(f.machine(p.id, id=y))
        kept = replace((await tx.usage.marks([(y, 1)]))[y, 1], seq=3, ended=True)
        await tx.usage.set_marks([kept])
        assert await tx.usage.prune_marks() == 2  # ended or not
        assert (await tx.usage.marks([("m-x", 1)]))["m-x", 1].seq == 0
        assert (await tx.usage.marks([(y, 1)]))[y, 1] == kept


async def test_usage_added_into_an_hours_row(store: SqlStore) -> None:
    """`add_into` sums hours into the row of their key (the interval widened to cover both),
    exactly, and makes the row the first time."""
    a = f.uid("p")
    hour = Hour("h:m-x:1:3600", a, "m-x", {"team": "red", "a": "b"}, 3610, 3620, 1_000_001, 0,
                0, 5)  # fmt: skip
    later = hour._replace(start=3650, end=3700, cpu_seconds=250_000, egress_bytes=7)
    async with store.write() as tx:
        await tx.usage.add_into([hour])
        await tx.usage.add_into([later, hour._replace(key="h:m-x:1:7200", start=7200, end=7210)])
    async with store.read() as tx:
        rows, _ = await tx.usage.records(a)
        [by_label] = await tx.usage.by_labels(a, 0, 8000)
    assert [(r.key, r.start, r.end, r.vcpu_seconds, r.cpu_seconds, r.egress_bytes, r.labels)
            for r in rows] == [
        ("h:m-x:1:3600", 3610, 3700, Decimal("2.000002"), Decimal("0.25"), 12, hour.labels),
        ("h:m-x:1:7200", 7200, 7210, Decimal("1.000001"), 0, 5, hour.labels),
    ]  # fmt: skip
    assert by_label[0] == {"a": "b", "team": "red"} and by_label[1].egress_bytes == 17


async def test_usage_added_by_two_writers_at_once_counts_once(store: SqlStore) -> None:
    """Two controllers adding the same records concurrently (PostgreSQL: both in flight)."""
    p = f.uid("p")
    records = [_usage(f"k{i}", p, "m", float(i), cpu_seconds=1) for i in range(50)]

    async def add(part: list[UsageRecord]) -> int:
        async with store.write() as tx:
            return await tx.usage.add(part)

    added = await asyncio.gather(add(records[:40]), add(records[10:]))
    assert sum(added) == 50
    async with store.read() as tx:
        [total] = await tx.usage.totals(p)
    assert total.cpu_seconds == 50 and total.records == 50
