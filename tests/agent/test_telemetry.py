"""The node's samples (agent/telemetry.py): spooled on disk until the controller takes them,
sent again after an outage or an agent restart with the same seqs, cumulative across counters
that start again (a resumed micro-VM's new QEMU and TAP), and a sandbox's running time kept
across restarts of the agent."""

from pathlib import Path

from hutch.agent.telemetry import Observed, Sampler, node_sample
from hutch.model.errors import Invalid, Unavailable
from hutch.model.sandbox import DiskIO, Reading, Resources, SandboxState, Stats
from hutch.network.node import NicCounters, Traffic
from hutch.wire.telemetry import Samples


def seen(state: SandboxState, cpu_ns: int, tx: int, started: float) -> Observed:
    stats = Stats(cpu_ns, 10 << 20, 128 << 20, 3) if state is SandboxState.RUNNING else None
    # A tenth of what it sends leaves its networks (the rest goes to its neighbours).
    nics = Traffic(NicCounters(2 * tx, tx, 2, 1), NicCounters(0, tx // 10, 0, 1)) if stats else None
    disks = {"root": DiskIO(read_bytes=cpu_ns // 1000)} if stats else {}
    return Observed("m-abc-2", Reading(state, Resources(cpus=2), started, stats), disks, nics)


async def test_samples_wait_on_disk_for_the_controller_and_keep_their_seqs(
    tmp_path: Path,
) -> None:
    posted: list[Samples] = []
    down = True

    async def post(samples: Samples) -> None:
        if down:
            raise Unavailable("controller cannot be reached")
        posted.append(samples)

    t0 = 1_000_000.0
    sampler = Sampler(tmp_path, limit=100, post=post)
    sampler.take([seen(SandboxState.RUNNING, 10**9, 500, t0 - 5)], node_sample(t0))
    sampler.take([seen(SandboxState.RUNNING, 3 * 10**9, 900, t0 - 5)], node_sample(t0 + 10))
    assert await sampler.flush() == 0 and not posted  # down: both stay spooled

    # The agent restarts (a new sampler on the same directory) while the sandbox runs on; its
    # new QEMU's counters start from zero (resumed): the samples' values go on growing.
    sampler = Sampler(tmp_path, limit=100, post=post)
    sampler.take([seen(SandboxState.RUNNING, 10**9, 100, t0 - 5)], node_sample(t0 + 20))
    sampler.take([seen(SandboxState.SUSPENDED, 0, 0, t0 - 5)], node_sample(t0 + 30))
    sampler.take([seen(SandboxState.EXITED, 0, 0, t0 - 5)], node_sample(t0 + 40))
    sampler.take([seen(SandboxState.EXITED, 0, 0, t0 - 5)], node_sample(t0 + 50))  # no more
    down = False
    assert await sampler.flush() == 6
    got = [m for batch in posted for m in batch.machines]
    assert [(m.machine, m.generation, m.seq, m.state) for m in got] == [
        ("m-abc", 2, 1, "running"), ("m-abc", 2, 2, "running"), ("m-abc", 2, 3, "running"),
        ("m-abc", 2, 4, "suspended"), ("m-abc", 2, 5, "ended"),
    ]  # fmt: skip
    # Running time: from its record's start (5 s before the first sample), then while running.
    assert [m.running_s for m in got] == [5, 15, 25, 25, 25]
    assert [m.cpu_s for m in got] == [1, 3, 4, 4, 4]
    assert [m.public.tx_bytes for m in got] == [50, 90, 100, 100, 100]
    assert [m.private.tx_bytes for m in got] == [450, 810, 900, 900, 900]
    assert got[2].disks["root"].read_bytes == 4 * 10**6 and got[0].vcpus == 2
    assert await sampler.flush() == 0  # taken: the spool is empty

    # A sandbox destroyed between two turns still ends: its last sample says so, with what it
    # had reached (a lost one is not counted again: it is sampled as new if it comes back).
    running = Reading(SandboxState.RUNNING, Resources(), t0, Stats(7 * 10**9, 1, 2, 1))
    sampler.take([Observed("m-gone-1", running, {}, None)], node_sample(t0 + 60))
    sampler.take([], node_sample(t0 + 70))
    posted.clear()
    assert await sampler.flush() == 2
    gone = [(m.machine, m.seq, m.state, m.cpu_s) for b in posted for m in b.machines]
    assert gone == [("m-gone", 1, "running", 7), ("m-gone", 2, "ended", 7)]

    # One that ran and ended between two turns (a run of `echo hi`) is sampled once, ended, with
    # its time from start to end and the CPU its counters still show; one that never started
    # is not. Before, the first went unmetered, its start too.
    quick = Reading(SandboxState.EXITED, Resources(), t0 + 71, Stats(2 * 10**9, 1, 2, 1), t0 + 74)
    never = Reading(SandboxState.EXITED, Resources(), None, None)
    sampler.take([Observed("m-quick-1", quick, {}, None), Observed("m-never-1", never, {}, None)],
                 node_sample(t0 + 80))  # fmt: skip
    sampler.take([Observed("m-quick-1", quick, {}, None)], node_sample(t0 + 90))  # no more
    posted.clear()
    assert await sampler.flush() == 2  # two posts: the node's sample goes in each
    ran = [(m.machine, m.seq, m.state, m.running_s, m.cpu_s) for b in posted for m in b.machines]
    assert ran == [("m-quick", 1, "ended", 3, 2)]

    # A post the controller refuses as such is dropped, not sent again and again before the
    # rest.
    refuse = True

    async def picky(samples: Samples) -> None:
        if refuse:
            raise Invalid("machines.0.seq: Input should be greater than or equal to 1")
        posted.append(samples)

    posted = []
    one = Sampler(tmp_path / "one", limit=10, post=picky)
    one.take([seen(SandboxState.RUNNING, 10**9, 1, t0)], node_sample(t0))
    assert await one.flush() == 0
    refuse = False
    one.take([seen(SandboxState.RUNNING, 2 * 10**9, 1, t0)], node_sample(t0 + 10))
    assert await one.flush() == 1 and [b.machines[0].seq for b in posted] == [2]

    # While the controller stays away, the spool keeps the newest `limit` posts only.
    down = True
    small = Sampler(tmp_path / "small", limit=3, post=post)
    for i in range(5):
        small.take([seen(SandboxState.RUNNING, i * 10**9, i, t0)], node_sample(t0 + i))
    down, posted = False, []
    assert await small.flush() == 3
    assert [b.machines[0].seq for b in posted] == [3, 4, 5]
