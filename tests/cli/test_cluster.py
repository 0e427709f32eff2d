"""A cluster on one machine: a controller, and three node agents each in a network namespace of
its own (its own address, reached over a bridge), running real micro-VMs. Machines spread
across them; a killed agent's `always` machines run again on the others; the agent restarted
destroys what it ran (fencing: nothing runs twice); cordon and drain."""

import functools
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hutch.client import Client, NotFound
from hutch.wire.machines import MachineView
from tests.cli.test_serve import layout_of
from tests.controller import BUSYBOX_CONFIG
from tests.helpers import free_port
from tests.helpers.cli import HUTCH, Hutch
from tests.images.ocibuild import write_oci_layout

GRACE = 4.0  # seconds without heartbeats before a node's machines are lost
HEARTBEAT = "0.5"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@dataclass
class Net:
    """A bridge in this namespace and three namespaces hanging off it, one address each."""

    tag: str
    prefix: str  # "10.x.y."
    hosts: dict[str, str] = field(default_factory=dict)  # namespace -> its address

    @property
    def gateway(self) -> str:
        return self.prefix + "1"


@pytest.fixture
def net() -> Iterator[Net]:
    tag = f"h{os.getpid() % 10000}{random.randrange(100)}"
    n = Net(tag, f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}.")
    bridge = f"{tag}br"
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{n.gateway}/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        for i, name in enumerate("abc"):
            ns, outside, inside = f"{tag}{name}", f"{tag}{name}o", f"{tag}{name}i"
            address = f"{n.prefix}{11 + i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", inside, "netns", ns)
            sh("ip", "link", "set", outside, "master", bridge, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            n.hosts[ns] = address
        yield n
    finally:
        for ns in n.hosts:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


@dataclass
class Agent:
    name: str
    ns: str
    address: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, controller: str, token: str) -> None:
        # nsenter, not `ip netns exec`: that mounts a fresh /sys, hiding the cgroup hierarchies.
        argv = ["nsenter", f"--net=/var/run/netns/{self.ns}", HUTCH, "agent",
                "--controller", controller, "--join-token", token, "--name", self.name,
                "--domain", f"rack-{self.name}",
                "--listen", f"{self.address}:0", "--advertise", f"http://{self.address}:0",
                "--heartbeat", HEARTBEAT]  # fmt: skip
        self.proc = subprocess.Popen(argv, env=self.env, stderr=self.log.open("ab"))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def vms() -> list[str]:
    """Sandbox ids of the micro-VMs running on this host (QEMU is named after them)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [
        word.split(",")[0].removeprefix("hutch-")
        for line in out.splitlines()
        if "qemu-system" in line
        for word in line.split()
        if word.startswith("hutch-m-")
    ]


def until(
    what: str, check: Callable[[], bool], timeout: float = 120, logs: list[Path] | None = None
) -> float:
    """Poll `check` until it holds; the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            said = "\n".join(p.read_text(errors="replace")[-1500:] for p in logs or [])
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{said}")
        time.sleep(0.2)
    return time.monotonic() - started


def test_three_agents_spread_fail_over_fence_cordon_and_drain(
    net: Net, hutch_env: dict[str, str], short_dir: Path, busybox_rootfs: Path
) -> None:
    port = free_port()
    url = f"http://{net.gateway}:{port}"
    state = short_dir / "c"
    controller = Hutch(
        {**hutch_env, "HUTCH_STATE_DIR": str(state), "HUTCH_NODE_GRACE": str(GRACE)}
    ).start(
        "controller", "--listen", f"{net.gateway}:{port}", stderr=(short_dir / "c.log").open("wb")
    )
    agents = [
        Agent(f"node-{name}", ns, address,
              {**hutch_env, "HUTCH_STATE_DIR": str(short_dir / name),
               "HUTCH_CGROUP_PARENT": f"hutch-{net.tag}-{name}",
               "HUTCH_VM_UID_BASE": str(1_600_000 + 10_000 * i)},
              short_dir / f"{name}.log")
        for i, (name, (ns, address)) in enumerate(zip("abc", net.hosts.items(), strict=True))
    ]  # fmt: skip
    try:
        until("the controller", (state / "admin-token").exists, 60)
        client = Client(url, (state / "admin-token").read_text().strip(), project="default")
        until("the API", lambda: _answers(client), 60)
        token = client.nodes.join_token(600).token
        for agent in agents:
            agent.start(url, token)
        until("three ready nodes", lambda: _ready(client) == {a.name for a in agents},
              logs=[a.log for a in agents])  # fmt: skip
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
              logs=[short_dir / "c.log", *(a.log for a in agents)])  # fmt: skip
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
        victim.start(url, token)
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
        _tear_down(controller, agents, hutch_env, short_dir)


def _answers(client: Client) -> bool:
    try:
        list(client.nodes.list())
    except Exception:  # not up yet
        return False
    return True


def _ready(client: Client) -> set[str]:
    return {n.name for n in client.nodes.list() if n.state == "ready"}


def _node(m: MachineView) -> str:
    assert m.node is not None, m
    return m.node


def _machine(sandbox: str) -> str:
    return sandbox.rsplit("-", 1)[0]


def _running_off(client: Client, m: MachineView, nodes: set[str]) -> bool:
    now = client.machines.get(m)
    return now.state == "running" and now.node is not None and now.node not in nodes


def _tear_down(
    controller: "subprocess.Popen[bytes]", agents: list[Agent], env: dict[str, str], short_dir: Path
) -> None:
    """Agents stopped, then the controller, then what the agents left running destroyed."""
    for agent in agents:
        agent.stop()
    controller.send_signal(signal.SIGTERM)
    controller.wait(30)
    _destroy_vms(env, short_dir)


def _destroy_vms(env: dict[str, str], short_dir: Path) -> None:
    """What the agents left running (they keep their VMs over a restart, by design)."""
    for name in "abc":
        node_env = {**env, "HUTCH_STATE_DIR": str(short_dir / name / "node")}
        hutch = Hutch(node_env, timeout=120)
        listed = hutch("sandbox", "ls", "-a").stdout
        ids = [line.split()[0] for line in listed.splitlines()[1:] if line.strip()]
        if ids:
            hutch("sandbox", "rm", "--force", *ids)


def test_a_node_that_joins_later_runs_the_images_it_missed(
    net: Net, hutch_env: dict[str, str], short_dir: Path, busybox_rootfs: Path
) -> None:
    """Images imported while a node was away reach it from a peer, through the controller, when
    a machine placed there needs them: the project's own under the project, the catalogue's
    for everyone, each checked by digest; another project cannot have them fetched."""
    port = free_port()
    url = f"http://{net.gateway}:{port}"
    state = short_dir / "c"
    controller = Hutch({**hutch_env, "HUTCH_STATE_DIR": str(state)}).start(
        "controller", "--listen", f"{net.gateway}:{port}", stderr=(short_dir / "c.log").open("wb")
    )
    agents = [
        Agent(f"node-{name}", ns, address,
              {**hutch_env, "HUTCH_STATE_DIR": str(short_dir / name),
               "HUTCH_CGROUP_PARENT": f"hutch-{net.tag}-{name}"},
              short_dir / f"{name}.log")
        for name, (ns, address) in zip("abc", net.hosts.items(), strict=True)
    ]  # fmt: skip
    logs = [short_dir / "c.log", *(a.log for a in agents)]
    try:
        until("the controller", (state / "admin-token").exists, 60)
        secret = (state / "admin-token").read_text().strip()
        admin = Client(url, secret, project="default")
        until("the API", lambda: _answers(admin), 60)
        token = admin.nodes.join_token(600).token
        first, late = agents[:2], agents[2]
        for agent in first:
            agent.start(url, token)
        until("two ready nodes", lambda: _ready(admin) == {a.name for a in first}, logs=logs)
        admin.projects.create("other")
        other = Client(url, secret, project="other")
        [catalogue] = admin.images.import_(
            layout_of(busybox_rootfs, short_dir), names=["busybox"], public=True
        )
        app = short_dir / "app"
        write_oci_layout(app, [busybox_rootfs], {**BUSYBOX_CONFIG, "Cmd": ["echo", "app"]})
        [own] = admin.images.import_(app, names=["app:1"])

        late.start(url, token)
        until("the late node ready", lambda: late.name in _ready(admin), logs=logs)
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
        _tear_down(controller, agents, hutch_env, short_dir)
