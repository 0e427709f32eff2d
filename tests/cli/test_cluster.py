"""A cluster on one machine: a controller, and three node agents each in a network namespace of
its own (its own address, reached over a bridge), running real micro-VMs. Machines spread
across them; a killed agent's `always` machines run again on the others; the agent restarted
destroys what it ran (fencing: nothing runs twice); cordon and drain."""

import functools
import time
from pathlib import Path

import pytest

from hutch.client import Client, NotFound
from hutch.wire.machines import MachineView
from tests.cli.test_serve import layout_of
from tests.controller import BUSYBOX_CONFIG
from tests.helpers.cluster import Net, cluster, until, vms
from tests.images.ocibuild import write_oci_layout

GRACE = 4.0  # seconds without heartbeats before a node's machines are lost


def test_three_agents_spread_fail_over_fence_cordon_and_drain(
    net: Net, hutch_env: dict[str, str], short_dir: Path, busybox_rootfs: Path
) -> None:
    c = cluster(
        net, hutch_env, short_dir, controller_env={"HUTCH_NODE_GRACE": str(GRACE)},
        agent_env=lambda i, name: {"HUTCH_VM_UID_BASE": str(1_600_000 + 10_000 * i)},
    )  # fmt: skip
    agents = c.agents
    try:
        client = c.up()
        c.start(agents)
        nodes = {n.name: n for n in client.nodes.list()}
        assert {n.domain for n in nodes.values()} == {"rack-node-a", "rack-node-b", "rack-node-c"}
        ids = {n.id: name for name, n in nodes.items()}
        client.images.import_(layout_of(busybox_rootfs, short_dir), names=["busybox"])

        # Spread (the default strategy): on equal nodes, one machine each.
        keep = [client.machines.create("busybox", ["sleep", "3600"], name=f"keep-{i}",
                                       restart="always")
                for i in range(3)]  # fmt: skip
        once = client.machines.create("busybox", ["sleep", "3600"], name="once")
        for m in [*keep, once]:
            assert client.machines.wait(m, "running", timeout=120).state == "running"
        placed = {m.name: ids[_node(client.machines.get(m))] for m in [*keep, once]}
        assert sorted(placed[f"keep-{i}"] for i in range(3)) == ["node-a", "node-b", "node-c"]

        # Kill the agent that runs `once` (and one of the keeps): its VMs live on, unfenced.
        victim = next(a for a in agents if a.name == placed["once"])
        on_victim = {m.id for m in [*keep, once] if placed[m.name] == victim.name}
        old = {v for v in vms() if _machine(v) in on_victim}  # their sandboxes there
        assert len(old) == len(on_victim) == 2
        killed_at = time.monotonic()
        victim.kill()
        moved = [m for m in keep if m.id in on_victim]
        assert len(moved) == 1

        def moved_elsewhere() -> bool:
            m = client.machines.get(moved[0])
            return m.state == "running" and m.node not in (None, nodes[victim.name].id)

        until("the lost machine running elsewhere", moved_elsewhere, 120,
              logs=c.logs)  # fmt: skip
        failover = time.monotonic() - killed_at
        print(f"failover: {failover:.1f} s (grace {GRACE:.0f} s)")
        assert failover < GRACE + 20  # detection, a 1 s restart backoff, a boot (TCG)
        lost = client.machines.get(once)
        assert lost.state == "lost" and victim.name in lost.error and lost.node is None
        assert client.nodes.get(victim.name).state == "unreachable"
        # Both generations of the moved machine run now: the old one, cut off, on the victim.
        assert sum(v.startswith(moved[0].id) for v in vms()) == 2

        # The agent comes back: it re-adopts its VMs, finds they are not its any more, and
        # destroys them. Every machine then runs exactly once.
        victim.start(c.url, c.token)
        until("the victim ready", lambda: client.nodes.get(victim.name).state == "ready")
        until("the old sandboxes destroyed", lambda: not old & set(vms()),
              logs=[victim.log])  # fmt: skip
        running = [v for v in vms() if _machine(v) in {m.id for m in keep}]
        assert sorted(_machine(v) for v in running) == sorted(m.id for m in keep), running
        assert client.nodes.get(victim.name).allocated.memory_mib == 0

        # Cordon: nothing new goes there. Drain: what runs there moves.
        client.nodes.cordon("node-a")
        plan = client.machines.explain("busybox")
        assert {r.node: r.reason for r in plan.rejected}.get("node-a") == "node is cordoned"
        drained = next(a.name for a in agents if a.name not in ("node-a", victim.name))
        before = [m for m in keep if _node(client.machines.get(m)) == nodes[drained].id]
        client.nodes.drain(drained)
        away = {nodes[drained].id, nodes["node-a"].id}
        for m in before:
            until(f"{m.name} off {drained}", functools.partial(_running_off, client, m, away))
        assert client.nodes.get(drained).cordoned
        until(f"{drained} empty", lambda: client.nodes.get(drained).allocated.memory_mib == 0)
        assert len({_machine(v) for v in vms()} & {m.id for m in keep}) == 3
        assert len([v for v in vms() if _machine(v) in {m.id for m in keep}]) == 3

        # Removed, the drained node's agent finds its credential refused and joins anew.
        old_id = nodes[drained].id
        client.nodes.remove(drained)
        until(f"{drained} back as a new node",
              lambda: any(n.name == drained and n.id != old_id and n.state == "ready"
                          for n in client.nodes.list()),
              logs=[next(a.log for a in agents if a.name == drained)])  # fmt: skip
    finally:
        c.tear_down()


def _node(m: MachineView) -> str:
    assert m.node is not None, m
    return m.node


def _machine(sandbox: str) -> str:
    return sandbox.rsplit("-", 1)[0]


def _running_off(client: Client, m: MachineView, nodes: set[str]) -> bool:
    now = client.machines.get(m)
    return now.state == "running" and now.node is not None and now.node not in nodes


def test_a_node_that_joins_later_runs_the_images_it_missed(
    net: Net, hutch_env: dict[str, str], short_dir: Path, busybox_rootfs: Path
) -> None:
    """Images imported while a node was away reach it from a peer, through the controller, when
    a machine placed there needs them: the project's own under the project, the catalogue's
    for everyone, each checked by digest; another project cannot have them fetched."""
    c = cluster(net, hutch_env, short_dir)
    agents, logs = c.agents, c.logs
    try:
        admin = c.up()
        first, late = agents[:2], agents[2]
        c.start(first)
        admin.projects.create("other")
        other = c.client("other")
        [catalogue] = admin.images.import_(
            layout_of(busybox_rootfs, short_dir), names=["busybox"], public=True
        )
        app = short_dir / "app"
        write_oci_layout(app, [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["echo", "app"]})
        [own] = admin.images.import_(app, names=["app:1"])

        c.start([late])
        for agent in first:
            admin.nodes.cordon(agent.name)
        late_id = admin.nodes.get(late.name).id
        for client, ref, says, image in (
            (admin, "app:1", "app\n", own),
            (other, "busybox", "from the catalogue\n", catalogue),
        ):
            m = client.machines.run(ref, ["echo", says.strip()] if ref == "busybox" else None,
                                    runtime="container")  # fmt: skip
            ended = client.machines.wait(m, timeout=120)
            assert ended.node == late_id and ended.state == "exited", (ended.error, logs)
            assert "".join(line.data for line in client.machines.logs(m)) == says
            assert ended.image_digest == image.id
        # The project's image is the project's alone: another project cannot have it fetched.
        with pytest.raises(NotFound, match="app:1"):
            other.machines.create("app:1", runtime="container")
    finally:
        c.tear_down()
