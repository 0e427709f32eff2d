"""`Machines.report`, what a node says happened to a machine, over the real store (SQLite and
PostgreSQL): generation fencing, the restart policies (`on-failure` with its backoff), `--rm`.

Each row is a machine as it stands, the report its node sends, and what holds afterwards: the
machine's state, desired state, generation and restarts, the restart's backoff, whether its
node's share is still held, and what its node is told next.
"""

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import pytest

from hutch import config
from hutch.controller import Controller, build_controller
from hutch.model.errors import NotFound
from hutch.model.machine import (
    Capacity,
    Desired,
    Machine,
    MachineState,
    Node,
    Report,
    RestartPolicy,
)
from hutch.placement import need
from hutch.services.machines import RESTART_BACKOFF_MAX, request_of
from hutch.wire.telemetry import MachineSample, NodeSample, Samples
from tests.store import factories as f
from tests.store.at_head import controller_db_at_head

S = MachineState
D = Desired
R = RestartPolicy
NOTHING = "nothing"  # the node's revision stays: it has nothing new to do
GONE = "gone"  # the machine left the node: destroyed, or its new generation waits to be placed


@dataclass(frozen=True)
class Before:
    state: MachineState = S.RUNNING
    desired: Desired = D.RUNNING
    generation: int = 1
    restarts: int = 0
    restart: RestartPolicy = R.NO
    auto_destroy: bool = False
    exit_code: int | None = None


@dataclass(frozen=True)
class Said:
    """The report: (generation, state) and what came with it."""

    generation: int
    state: MachineState
    exit_code: int | None = None
    error: str = ""


@dataclass(frozen=True)
class After:
    state: MachineState
    desired: Desired = D.RUNNING
    generation: int = 1
    restarts: int = 0
    backoff: float | None = None  # seconds until the new generation may start; None: no restart
    held: bool = True  # the node's share is still the machine's
    told: str = NOTHING  # NOTHING, GONE, or the desired state the node now sees
    exit_code: int | None = None


@dataclass(frozen=True)
class Row:
    name: str
    before: Before
    said: Said
    after: After
    events: int = field(default=1)  # state events the report adds


ROWS = [
    # -- fencing: a report about another generation, or said before, changes nothing -----------
    Row("an older generation's end is ignored (restart always)",
        Before(generation=3, restart=R.ALWAYS), Said(2, S.EXITED, 1),
        After(S.RUNNING, generation=3), events=0),
    Row("an older generation's failure is ignored (on-failure)",
        Before(generation=2, restart=R.ON_FAILURE), Said(1, S.FAILED, error="boom"),
        After(S.RUNNING, generation=2), events=0),
    Row("a newer generation than the machine's is ignored",
        Before(generation=1), Said(2, S.RUNNING), After(S.RUNNING), events=0),
    Row("an older generation's start is ignored",
        Before(S.CREATED, generation=2), Said(1, S.RUNNING),
        After(S.CREATED, generation=2), events=0),
    Row("a state said again is ignored (a restarted agent repeats itself)",
        Before(S.RUNNING), Said(1, S.RUNNING), After(S.RUNNING), events=0),
    Row("an end said again is ignored",
        Before(S.EXITED, exit_code=0, restart=R.ON_FAILURE), Said(1, S.EXITED, 0),
        After(S.EXITED, held=False, exit_code=0), events=0),
    Row("a start reported after the end is ignored",
        Before(S.EXITED, exit_code=1), Said(1, S.RUNNING),
        After(S.EXITED, held=False, exit_code=1), events=0),
    Row("a second, different end of the same generation is ignored (on-failure)",
        Before(S.EXITED, exit_code=0, restart=R.ON_FAILURE), Said(1, S.FAILED, error="lost"),
        After(S.EXITED, held=False, exit_code=0), events=0),
    Row("a second, different end of the same generation is ignored (no)",
        Before(S.FAILED, exit_code=None), Said(1, S.EXITED, 0),
        After(S.FAILED, held=False), events=0),
    Row("an old sandbox destroyed: the machine lives on",
        Before(S.RUNNING), Said(1, S.DESTROYED), After(S.RUNNING), events=0),
    # -- starting -------------------------------------------------------------------------------
    Row("starting", Before(S.CREATED), Said(1, S.STARTING),
        After(S.STARTING, told=D.RUNNING)),
    Row("running", Before(S.STARTING), Said(1, S.RUNNING), After(S.RUNNING, told=D.RUNNING)),
    # -- restart no -----------------------------------------------------------------------------
    Row("no: a non-zero exit ends it",
        Before(restart=R.NO), Said(1, S.EXITED, 3),
        After(S.EXITED, exit_code=3, held=False, told=D.RUNNING)),
    Row("no: a failure ends it",
        Before(restart=R.NO), Said(1, S.FAILED, error="the sandbox died"),
        After(S.FAILED, held=False, told=D.RUNNING)),
    # -- restart always -------------------------------------------------------------------------
    Row("always: exit 0 restarts it, after 1 s",
        Before(restart=R.ALWAYS), Said(1, S.EXITED, 0),
        After(S.CREATED, generation=2, restarts=1, backoff=1.0, held=False, told=GONE),
        events=2),
    Row("always: the fourth restart waits 8 s",
        Before(restart=R.ALWAYS, generation=4, restarts=3), Said(4, S.EXITED, 0),
        After(S.CREATED, generation=5, restarts=4, backoff=8.0, held=False, told=GONE),
        events=2),
    Row("always: a stop is not undone",
        Before(S.STOPPING, D.STOPPED, restart=R.ALWAYS), Said(1, S.EXITED, 143),
        After(S.EXITED, D.STOPPED, exit_code=143, held=False, told=D.STOPPED)),
    # -- restart on-failure ---------------------------------------------------------------------
    Row("on-failure: exit 0 ends it",
        Before(restart=R.ON_FAILURE), Said(1, S.EXITED, 0),
        After(S.EXITED, exit_code=0, held=False, told=D.RUNNING)),
    Row("on-failure: a non-zero exit restarts it, after 1 s",
        Before(restart=R.ON_FAILURE), Said(1, S.EXITED, 1),
        After(S.CREATED, generation=2, restarts=1, backoff=1.0, held=False, told=GONE),
        events=2),
    Row("on-failure: a failed sandbox restarts it",
        Before(S.STARTING, restart=R.ON_FAILURE), Said(1, S.FAILED, error="no such image"),
        After(S.CREATED, generation=2, restarts=1, backoff=1.0, held=False, told=GONE),
        events=2),
    Row("on-failure: the backoff doubles (third restart: 4 s)",
        Before(restart=R.ON_FAILURE, generation=3, restarts=2), Said(3, S.EXITED, 2),
        After(S.CREATED, generation=4, restarts=3, backoff=4.0, held=False, told=GONE),
        events=2),
    Row("on-failure: the backoff stops growing at its ceiling",
        Before(restart=R.ON_FAILURE, generation=6, restarts=5), Said(6, S.EXITED, 1),
        After(S.CREATED, generation=7, restarts=6, backoff=RESTART_BACKOFF_MAX, held=False,
              told=GONE),
        events=2),
    Row("on-failure: and stays there",
        Before(restart=R.ON_FAILURE, generation=41, restarts=40), Said(41, S.FAILED, error="x"),
        After(S.CREATED, generation=42, restarts=41, backoff=RESTART_BACKOFF_MAX, held=False,
              told=GONE),
        events=2),
    Row("on-failure: a stopped machine's non-zero exit is not a failure to undo",
        Before(S.STOPPING, D.STOPPED, restart=R.ON_FAILURE), Said(1, S.EXITED, 137),
        After(S.EXITED, D.STOPPED, exit_code=137, held=False, told=D.STOPPED)),
    Row("on-failure: a machine being destroyed is not restarted",
        Before(desired=D.DESTROYED, restart=R.ON_FAILURE), Said(1, S.EXITED, 1),
        After(S.EXITED, D.DESTROYED, exit_code=1, held=False, told=D.DESTROYED)),
    # -- --rm (auto-destroy) --------------------------------------------------------------------
    Row("--rm: its end destroys it",
        Before(auto_destroy=True), Said(1, S.EXITED, 0),
        After(S.EXITED, D.DESTROYED, exit_code=0, held=False, told=D.DESTROYED)),
    Row("--rm: so does a failure",
        Before(auto_destroy=True), Said(1, S.FAILED, error="boom"),
        After(S.FAILED, D.DESTROYED, held=False, told=D.DESTROYED)),
    Row("--rm: and a stop",
        Before(S.STOPPING, D.STOPPED, auto_destroy=True), Said(1, S.EXITED, 143),
        After(S.EXITED, D.DESTROYED, exit_code=143, held=False, told=D.DESTROYED)),
    Row("--rm with on-failure: a failure restarts it rather than destroying it",
        Before(auto_destroy=True, restart=R.ON_FAILURE), Said(1, S.EXITED, 1),
        After(S.CREATED, generation=2, restarts=1, backoff=1.0, held=False, told=GONE),
        events=2),
    Row("--rm: the node's destroyed sandbox destroys the machine",
        Before(S.EXITED, D.DESTROYED, exit_code=0, auto_destroy=True), Said(1, S.DESTROYED),
        After(S.DESTROYED, D.DESTROYED, exit_code=0, held=False, told=GONE)),
    Row("destroyed while running: its share comes back",
        Before(S.RUNNING, D.DESTROYED), Said(1, S.DESTROYED),
        After(S.DESTROYED, D.DESTROYED, held=False, told=GONE)),
    Row("a destroyed machine hears nothing more",
        Before(S.DESTROYED, D.DESTROYED), Said(1, S.FAILED, error="late"),
        After(S.DESTROYED, D.DESTROYED, held=False), events=0),
]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Controller]:
    """The controller's real services over a fresh store; nothing runs in the background."""
    url = controller_db_at_head(request, request.param, tmp_path)
    settings = config.load(
        state_dir=tmp_path, database_url=url, join_secret="j" * 32, controller_secret="c" * 32
    )
    ctl = build_controller(settings)
    await ctl.store.open()
    yield ctl
    await ctl.link.close()
    await ctl.store.close()


async def placed(ctl: Controller, before: Before) -> tuple[Machine, Node]:
    """A machine as `before` says, placed on a node of its own (which holds its share while it
    is active)."""
    p = f.project()
    m = f.machine(
        p.id,
        runtime="container",
        restart=before.restart,
        auto_destroy=before.auto_destroy,
    )
    node = f.node(allocated=Capacity(0, 0, 0))
    m = replace(
        m,
        node_id=node.id,
        state=before.state,
        desired=before.desired,
        generation=before.generation,
        restarts=before.restarts,
        exit_code=before.exit_code,
    )
    if before.state in (S.CREATED, S.STARTING, S.RUNNING, S.STOPPING):
        node = replace(node, allocated=share(m, node))
    async with ctl.store.write() as tx:
        await tx.projects.create(p)
        await tx.nodes.create(node, "credential-hash")
        await tx.machines.create(m)
    return m, node


def share(m: Machine, node: Node) -> Capacity:
    return need(request_of(m.spec), node)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_report(services: Controller, row: Row) -> None:
    ctl = services
    m, node = await placed(ctl, row.before)
    async with ctl.store.read() as tx:
        revision = await tx.nodes.revision(node.id)
        events = len(await tx.events.since(m.project_id, 0))
    said = Report(
        row.said.generation,
        row.said.state,
        time.time(),
        exit_code=row.said.exit_code,
        error=row.said.error,
    )
    t0 = time.time()
    answer = await ctl.machines.report(node, m.id, said)
    t1 = time.time()

    async with ctl.store.read() as tx:
        got = await tx.machines.by_id(m.id)
        stored_node = await tx.nodes.get(node.id)
        now_revision = await tx.nodes.revision(node.id)
        on_node = {x.id: x for x in await tx.machines.on_node(node.id)}
        added = len(await tx.events.since(m.project_id, 0)) - events
    want = row.after
    assert answer == got
    assert (got.state, got.desired, got.generation, got.restarts, got.exit_code) == (
        want.state,
        want.desired,
        want.generation,
        want.restarts,
        want.exit_code,
    )
    assert added == row.events
    if want.backoff is None:
        assert got.start_after == m.start_after
    else:  # a new generation, for the scheduler to place: its node starts it after the backoff
        assert got.node_id is None
        assert t0 + want.backoff <= got.start_after <= t1 + want.backoff
    assert stored_node.allocated == (share(m, node) if want.held else Capacity(0, 0, 0))
    if want.told == NOTHING:
        assert now_revision == revision
        assert (got.node_id, got.version) == (node.id, m.version)  # not written at all
    elif want.told == GONE:  # its agent destroys the sandbox it has
        assert now_revision > revision
        assert m.id not in on_node
    else:
        assert now_revision > revision
        assert on_node[m.id].desired == want.told
        assert on_node[m.id].sandbox_id == f"{m.id}-{want.generation}"


async def test_a_report_about_another_nodes_machine_is_not_found(services: Controller) -> None:
    m, _ = await placed(services, Before(restart=R.ALWAYS))
    other = f.node()
    async with services.store.write() as tx:
        await tx.nodes.create(other, "other-credential")
    with pytest.raises(NotFound, match="on this node"):
        await services.machines.report(other, m.id, Report(1, S.EXITED, time.time(), 1))
    with pytest.raises(NotFound, match="on this node"):
        await services.machines.report(other, "m-none", Report(1, S.EXITED, time.time(), 1))
    async with services.store.read() as tx:
        got = await tx.machines.by_id(m.id)
    assert (got.state, got.generation, got.version) == (S.RUNNING, 1, m.version)


async def test_a_generation_reported_running_is_a_start_once(services: Controller) -> None:
    """Its node's report that a generation runs is its start in the usage ledger (one that ends
    before it is sampled has one too); the report repeated and the generation's first sample
    count no other."""
    m, node = await placed(services, Before(state=S.STARTING))

    async def starts_and_vcpu_seconds() -> list[tuple[int, Decimal]]:
        async with services.store.read() as tx:
            return [(t.starts, t.vcpu_seconds) for t in await tx.usage.totals(m.project_id)]

    assert await starts_and_vcpu_seconds() == []
    for said in (S.RUNNING, S.RUNNING, S.EXITED):
        await services.machines.report(node, m.id, Report(1, said, time.time(), exit_code=0))
    assert await starts_and_vcpu_seconds() == [(1, Decimal(0))]  # ended, not sampled
    sample = MachineSample(machine=m.id, generation=1, seq=1, time=time.time(), state="ended",
                           vcpus=1, memory_mib=256, running_s=1.0, cpu_s=0.5, memory_bytes=0,
                           memory_limit_bytes=256 << 20)  # fmt: skip
    node_sample = NodeSample(time=0, cpu_s=0, memory_bytes=0, hutch_cpu_s=0, hutch_memory_bytes=0)
    await services.metering.record(node.id, Samples(node=node_sample, machines=[sample]))
    assert await starts_and_vcpu_seconds() == [(1, Decimal(1))]
