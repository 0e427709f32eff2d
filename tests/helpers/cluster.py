"""A cluster on one machine, for the tests that need several nodes (tests/cli/test_cluster.py,
tests/cli/test_cluster_networks.py): a bridge in the test's namespace, a network namespace per
node hanging off it (an address each), a real `hutch controller` listening on the bridge's
address, and real `hutch agent`s, one in each namespace.

    test's namespace: bridge <tag>br  10.X.Y.1/24 (the controller listens here)
        | veth           | veth           | veth
    <tag>a 10.X.Y.11  <tag>b 10.X.Y.12  <tag>c 10.X.Y.13   (one agent each: node-a, -b, -c)
"""

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hutch.client import Client
from hutch.storage.local import unmount_pool
from tests.helpers import free_port
from tests.helpers.cli import HUTCH, Hutch

NAMES = "abc"
HEARTBEAT = "0.5"  # seconds between an agent's heartbeats


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


def make_net() -> Iterator[Net]:
    """The `net` fixture's body: the bridge and namespaces, removed at the end."""
    tag = f"h{os.getpid() % 10000}{random.randrange(100)}"
    n = Net(tag, f"10.{random.randrange(100, 250)}.{random.randrange(1, 250)}.")
    bridge = f"{tag}br"
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{n.gateway}/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        for i, name in enumerate(NAMES):
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


def in_netns(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A command in the namespace `ns` (a name under /var/run/netns)."""
    return subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{ns}", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@dataclass
class Agent:
    name: str
    ns: str
    address: str
    env: dict[str, str]
    log: Path
    labels: tuple[str, ...] = ()  # k=v
    proc: subprocess.Popen[bytes] | None = None

    def start(self, controller: str, token: str) -> None:
        # nsenter, not `ip netns exec`: that mounts a fresh /sys, hiding the cgroup hierarchies.
        argv = ["nsenter", f"--net=/var/run/netns/{self.ns}", HUTCH, "agent",
                "--controller", controller, "--join-token", token, "--name", self.name,
                "--domain", f"rack-{self.name}",
                "--listen", f"{self.address}:0", "--advertise", f"http://{self.address}:0",
                "--heartbeat", HEARTBEAT]  # fmt: skip
        for label in self.labels:
            argv += ["--label", label]
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


@dataclass
class Cluster:
    """A controller on the net's bridge address and an agent (not started) per namespace."""

    net: Net
    url: str
    state: Path  # the controller's state directory
    controller: "subprocess.Popen[bytes]"
    agents: list[Agent]
    env: Mapping[str, str]  # the test's hutch environment
    short_dir: Path
    admin: Client | None = None
    token: str = ""

    @property
    def logs(self) -> list[Path]:
        return [self.short_dir / "c.log", *(a.log for a in self.agents)]

    @property
    def secret(self) -> str:
        return (self.state / "admin-token").read_text().strip()

    def client(self, project: str) -> Client:
        return Client(self.url, self.secret, project=project)

    def up(self) -> Client:
        """Wait for the controller's API; the admin client (project default); a join token."""
        until("the controller", (self.state / "admin-token").exists, 60)
        self.admin = self.client("default")
        until("the API", lambda: answers(self.admin), 60)  # type: ignore[arg-type]
        self.token = self.admin.nodes.join_token(600).token
        return self.admin

    def start(self, agents: list[Agent]) -> None:
        """Start `agents` and wait until each is a ready node."""
        assert self.admin is not None
        for agent in agents:
            agent.start(self.url, self.token)
        admin = self.admin
        until(f"{len(agents)} more ready nodes",
              lambda: {a.name for a in agents} <= ready(admin), logs=self.logs)  # fmt: skip

    def tear_down(self) -> None:
        """Agents stopped, then the controller, then what the agents left running destroyed."""
        for agent in self.agents:
            agent.stop()
        self.controller.send_signal(signal.SIGTERM)
        self.controller.wait(30)
        destroy_vms(self.env, self.short_dir)
        for agent in self.agents:  # each node's volume pool, if it made one (a loop mount)
            unmount_pool(Path(agent.env["HUTCH_STATE_DIR"]) / "node" / "volumes")


def cluster(
    net: Net,
    env: Mapping[str, str],
    short_dir: Path,
    *,
    controller_env: Mapping[str, str] | None = None,
    agent_env: Callable[[int, str], Mapping[str, str]] = lambda i, name: {},
    labels: Callable[[str], tuple[str, ...]] = lambda name: (),
) -> Cluster:
    """A controller started, and agents `node-a`, `node-b`, `node-c` made (not started): each
    with a state directory and a cgroup parent of its own, plus `agent_env(i, name)`."""
    port = free_port()
    url = f"http://{net.gateway}:{port}"
    state = short_dir / "c"
    controller = Hutch({**env, "HUTCH_STATE_DIR": str(state), **(controller_env or {})}).start(
        "controller", "--listen", f"{net.gateway}:{port}", stderr=(short_dir / "c.log").open("wb")
    )
    agents = [
        Agent(f"node-{name}", ns, address,
              {**env, "HUTCH_STATE_DIR": str(short_dir / name),
               "HUTCH_CGROUP_PARENT": f"hutch-{net.tag}-{name}", **agent_env(i, name)},
              short_dir / f"{name}.log", labels(name))
        for i, (name, (ns, address)) in enumerate(zip(NAMES, net.hosts.items(), strict=True))
    ]  # fmt: skip
    return Cluster(net, url, state, controller, agents, env, short_dir)


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


def answers(client: Client) -> bool:
    try:
        list(client.nodes.list())
    except Exception:  # not up yet
        return False
    return True


def ready(client: Client) -> set[str]:
    return {n.name for n in client.nodes.list() if n.state == "ready"}


def destroy_vms(env: Mapping[str, str], short_dir: Path) -> None:
    """What the agents left running (they keep their VMs over a restart, by design)."""
    for name in NAMES:
        node_env = {**env, "HUTCH_STATE_DIR": str(short_dir / name / "node")}
        hutch = Hutch(node_env, timeout=120)
        listed = hutch("sandbox", "ls", "-a").stdout
        ids = [line.split()[0] for line in listed.splitlines()[1:] if line.strip()]
        if ids:
            hutch("sandbox", "rm", "--force", *ids)
