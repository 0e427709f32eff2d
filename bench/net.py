"""Network benchmark: what hutch's node data path (hutch.network: bridge, TAPs/veths, nftables
anti-spoofing, DNAT) costs against the same packets on a plain bridge, under TCG.

In one run, side by side, median of N runs each (interleaved where both exist at once):
  (1) guest -> guest throughput on one node: two hutch micro-VMs on one network (the microvm
      driver wired by NodeNetwork) against two bare QEMUs (hutch's command line, same kernel,
      initramfs, root disk and virtio-net-device) with TAPs on a plain bridge, no nftables;
  (2) guest -> guest throughput across two nodes: two node namespaces joined by a veth
      underlay, each with its own NodeNetwork (underlay address, `set_peers`: hutch's VXLAN
      overlay) and microvm driver, one guest on each; against two bare QEMUs (the same command
      line) on TAPs of plain bridges joined by a plain VXLAN device over the same kind of
      underlay (static FDB and neighbour entries, no nftables, no br_netfilter rules);
  (3) request round trips to a guest through its published port (node_ip:host_port, DNAT)
      against the same to the guest's own address, from the node's namespace (the only place
      that may reach a guest's address: hutch lets nothing else in); from an "outside"
      namespace through the published port as a raw figure;
  (4) rule change to enforcement: a security group's ingress rule that lets a probe in to a
      running sandbox's published port removed, then added back (`NodeNetwork.set_groups`, as
      the agent applies a rule change), each timed from the call until a probe polling from
      "outside" fails, or passes again; p99 and p50 over the changes;
  (5) scale: rules for 1,000 sandboxes on one node (network namespaces with veths through
      hutch.network, no VMs) against 10: time to apply them, to plug one more (and unplug it),
      to change one sandbox's security groups, and the throughput of one flow between two of
      them; then back to 10 (the time to shrink).
Runs of two variants alternate, each going first in every other run, so that the load other
work puts on the machine falls on both alike; each ratio is also given per pair of neighbouring
runs (`*_paired_ratio`: the median of hutch/bare of the same run). The probe everywhere is
bench/netprobe.c, built static at set-up (like the guest agent) and
copied into the guests' root; nothing but namespaces made here carry traffic. Everything made
here (namespaces, links, tables, QEMUs) goes at the end, on failure too.

    .venv/bin/python -m bench.net [--runs N] [--quick]
"""

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from bench.host import build_static, log, remove_parent
from hutch import config
from hutch.agent.runtimes import open_driver
from hutch.images.busybox import build_busybox_rootfs
from hutch.images.rootfs import PreparedRoot, prepare_root
from hutch.model.network import Attachment, PortMapping
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec
from hutch.network import links
from hutch.network.nft import Allow, Groups
from hutch.network.node import NetworkOptions, NodeNetwork, Peer
from hutch.runtime import scratch
from hutch.runtime.cgroups import Cgroup, Layout, Limits
from hutch.runtime.channel import Connection, T, encode_process
from hutch.runtime.driver import DriverOptions, SandboxDriver
from hutch.runtime.microvm import (
    CPU_HEADROOM,
    EXIT_FILE,
    QEMU_PIDS,
    MicroVMBackend,
    MicroVMOptions,
    create_exit_disk,
    qemu_command,
    spawned,
)

PROBE_SOURCE = Path(__file__).with_name("netprobe.c")
SINK, ECHO, CONTROL = 5001, 5002, 5003  # netprobe's ports
NODE_IP, OUTSIDE_IP = "192.0.2.1", "192.0.2.2"
UNDERLAY = ("192.0.2.11", "192.0.2.12")  # the two nodes (each pair in namespaces of its own)
HOST_PORT = 8080  # the VMs' published echo port
RULE_PORT = 9090  # the port (4) unpublishes and publishes
SERVE = ("/bin/netprobe", "serve")
NETNS = Path("/run/netns")
VXLAN_MTU = 1450  # a 1500-byte underlay less VXLAN's 50 bytes
NUD_PERMANENT = 0x80


def attachment(vni: int, host: int) -> Attachment:
    """Host `host` (2..254) of network `vni`: 10.<vni/256>.<vni%256>.<host>/24."""
    net = f"10.{vni >> 8 & 0xFF}.{vni & 0xFF}"
    return Attachment(
        network_id=f"net-{vni}",
        vni=vni,
        mac=f"02:00:{vni >> 8 & 0xFF:02x}:{vni & 0xFF:02x}:00:{host:02x}",
        ip4=f"{net}.{host}",
        prefix4=24,
        gateway4=f"{net}.1",
        ip6=f"fd78:0:0:{vni:x}::{host:x}",
        prefix6=64,
        gateway6=f"fd78:0:0:{vni:x}::1",
    )


def vm_spec(root: PreparedRoot, sandbox_id: str, att: Attachment, *ports: str) -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id,
        process=ProcessSpec(args=SERVE, env=("PATH=/bin",)),
        rootfs=str(root.rootfs),
        root_disk=str(root.disk),
        resources=Resources(memory_mib=128),
        hostname=sandbox_id,
        networks=(att,),
        ports=tuple(PortMapping.parse(p) for p in ports),
    )


def netns_spec(sandbox_id: str, att: Attachment, *ports: str) -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id,
        process=ProcessSpec(args=("true",)),
        networks=(att,),
        ports=tuple(PortMapping.parse(p) for p in ports),
    )


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass
class Lab:
    """Namespaces, processes and QEMUs made by this run, all removed by `close`."""

    tag: str
    work: Path
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cgroups: list[Cgroup] = field(default_factory=list)  # the bare QEMUs'

    def netns(self, suffix: str) -> Path:
        name = f"{self.tag}{suffix}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return NETNS / name

    def link(self, a: Path, a_ip: str, b: Path, b_ip: str, prefix: int = 24) -> None:
        """A veth pair between two namespaces, addressed and up."""
        sh("ip", "-n", a.name, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
           "netns", b.name)  # fmt: skip
        for ns, name, ip in ((a, "up0", a_ip), (b, "up1", b_ip)):
            sh("ip", "-n", ns.name, "addr", "add", f"{ip}/{prefix}", "dev", name)
            sh("ip", "-n", ns.name, "link", "set", name, "up")

    def spawn(self, netns: Path, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["nsenter", f"--net={netns}", *args], **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def run(self, netns: Path, *args: str, timeout: float = 120) -> str:
        out = subprocess.run(["nsenter", f"--net={netns}", *args], capture_output=True,
                             text=True, timeout=timeout, check=False)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} in {netns.name}: {out.stderr or out.stdout}")
        return out.stdout

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for cgroup in self.cgroups:
            cgroup.remove()
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def wait_port(netns: Path, ip: str, port: int, timeout: float = 120) -> None:
    def probe() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((ip, port), timeout=1).close()
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nothing answers on {ip}:{port} in {netns.name}") from None
                time.sleep(0.05)
            else:
                return

    links.run_in(netns, probe)


def control_send(netns: Path, ip: str, to_ip: str, nbytes: int) -> float:
    """Ask the netprobe at `ip` to send `nbytes` to the one at `to_ip`: its bytes/s."""

    def ask() -> str:
        with socket.create_connection((ip, CONTROL), timeout=600) as s:
            s.sendall(f"send {to_ip} {nbytes}\n".encode())
            return s.makefile().readline()

    line = links.run_in(netns, ask)
    if line.startswith("error") or not line:
        raise RuntimeError(f"{ip} -> {to_ip}: {line.strip() or 'no answer'}")
    return float(line.split()[2])


@dataclass(frozen=True, slots=True)
class Probe:
    lab: Lab
    binary: Path  # netprobe, on the host


def rtts_us(probe: Probe, netns: Path, ip: str, port: int, n: int) -> list[float]:
    """`n` round trips (connect, request, answer, close) from `netns`, in microseconds."""
    out = probe.lab.run(netns, str(probe.binary), "rr", ip, str(port), str(n))
    return [float(v) for v in out.split()]


# ---- bare QEMU on a plain bridge ------------------------------------------------------------


def plain_bridge(ipr: IPRoute, name: str, address: str | None = None) -> int:
    ipr.link("add", ifname=name, kind="bridge")
    index = int(ipr.link_lookup(ifname=name)[0])
    if address:
        ipr.addr("add", index=index, address=address, prefixlen=24)
    ipr.link("set", index=index, state="up")
    return index


def plain_tap(name: str, bridge: str) -> int:
    """A TAP opened as hutch opens its own (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), on a plain bridge
    (learning on, no FDB entries, no nftables)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    flags = links.IFF_TAP | links.IFF_NO_PI | links.IFF_VNET_HDR
    fcntl.ioctl(fd, links.TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0],
                 master=ipr.link_lookup(ifname=bridge)[0], state="up")  # fmt: skip
    return fd


@dataclass(frozen=True, slots=True)
class BareNIC:
    netns: Path
    bridge: str
    tap: str


@dataclass
class BareVM:
    proc: subprocess.Popen[bytes]
    conn: Connection

    async def close(self) -> None:
        await self.conn.close()
        self.proc.kill()
        self.proc.wait()


async def bare_vm(lab: Lab, opts: MicroVMOptions, spec: SandboxSpec, nic: BareNIC) -> BareVM:
    """QEMU with hutch's command line for `spec`, its NIC a TAP on a plain bridge; the guest
    agent runs netprobe. No driver: no uid, chroot or nftables; but a cgroup beside the hutch
    VMs' with the same limits, joined the same way: on a busy machine the CPU scheduler shares
    time between groups first, so a QEMU outside them would get another share of the machine
    than one inside (its own weight against the whole `hutch` group's), and the comparison
    would measure that instead of the data path."""
    sockets = Path(tempfile.mkdtemp(dir=lab.work, prefix="q"))
    scratch.create(sockets / scratch.FILE_NAME, spec.resources.scratch_bytes)
    create_exit_disk(sockets / EXIT_FILE)
    cgroup = Cgroup(Layout.detect(), opts.host.cgroup_parent, spec.id)
    res = spec.resources
    memory = (res.memory_mib + opts.overhead_mib) << 20
    cgroup.create(Limits(memory, pids=QEMU_PIDS, cpus=res.cpus + CPU_HEADROOM))
    lab.cgroups.append(cgroup)
    fd = links.run_in(nic.netns, lambda: plain_tap(nic.tap, nic.bridge))
    try:
        args = qemu_command(spec, opts, sockets, tap_fds=(fd,))
        proc = subprocess.Popen(
            spawned(opts, cgroup, args),  # the driver's own set-up: join the cgroup, no THP
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)  # QEMU has its copy; the TAP goes when QEMU exits
    lab.procs.append(proc)
    conn = await Connection.open(str(sockets / "agent.sock"), timeout=30)
    await conn.send(T.RUN, 1, encode_process(spec.process))
    while (frame := await conn.recv()) is not None:
        if frame.type == T.STDOUT and b"serving" in frame.payload:
            return BareVM(proc, conn)
    raise RuntimeError(f"bare qemu {spec.id}: netprobe did not start")


async def wait_serving(driver: SandboxDriver, sandbox_id: str) -> None:
    async for record in driver.logs(sandbox_id, follow=True):
        if b"serving" in record.data:
            return
    raise RuntimeError(f"{sandbox_id}: netprobe did not start")


@dataclass(frozen=True, slots=True)
class VxlanEnd:
    """One node of the bare VXLAN baseline: a plain bridge with a VXLAN port (nolearning, proxy,
    static FDB and neighbour entries per remote guest, no flood entry: the layout NET-PLAN.md
    gives hutch's `hx-<vni>`)."""

    vni: int
    local: str
    remote: str
    remote_guests: tuple[Attachment, ...]
    address: str | None = None  # on the bridge, to reach the guests from the node

    def make(self) -> None:
        with IPRoute() as ipr:
            bridge = plain_bridge(ipr, "bb0", self.address)
            ipr.link("add", ifname="vx0", kind="vxlan", vxlan_id=self.vni,
                     vxlan_local=self.local, vxlan_port=4789, vxlan_learning=0,
                     vxlan_proxy=1)  # fmt: skip
            vx = ipr.link_lookup(ifname="vx0")[0]
            ipr.link("set", index=vx, master=bridge, mtu=VXLAN_MTU, state="up")
            for att in self.remote_guests:
                ipr.fdb("append", ifindex=vx, lladdr=att.mac, dst=self.remote)
                ipr.neigh("add", dst=att.ip4, lladdr=att.mac, ifindex=vx, state=NUD_PERMANENT)


def alternate(
    variants: dict[str, Callable[[], float]],
    runs: int,
    each: Callable[[int, dict[str, list[float]]], None] | None = None,
) -> dict[str, list[float]]:
    """`runs` rounds of every variant, the order reversed every other round (A B, B A, ...) so
    that a drift in the machine's load weighs on all alike; `each(i, results)` after round i."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(variants[name]())
        if each is not None:
            each(i, out)
    return out


def paired_ratio(hutch: list[float], bare: list[float]) -> float:
    """The median of hutch/bare over the rounds: each round's two runs saw the same load."""
    return round(med([h / b for h, b in zip(hutch, bare, strict=True)]), 3)


# ---- rule change to enforcement -------------------------------------------------------------


# A probe's connection attempt (a SYN a security group drops is never answered) gives up after
# this: the next starts at once, so it is the resolution of the "passes again" times.
PROBE_CONNECT_TIMEOUT = 0.02


def poll_until(netns: Path, ip: str, port: int, want_open: bool, start: float) -> float:
    """From `netns`, round trips to ip:port until they answer (or stop answering) as wanted: the
    seconds from `start` to the start of the first probe that saw it. A denied probe hears
    nothing (security groups drop): one whose connection is not taken within
    PROBE_CONNECT_TIMEOUT counts as denied, and a denial is only believed if the next probe is
    denied too (a slow answer on a busy machine is not a rule change)."""

    def answers() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=PROBE_CONNECT_TIMEOUT) as s:
                s.settimeout(2)  # connected: the rule let it in, the answer may take its time
                s.sendall(b"ping\n")
                return s.recv(16) == b"ping\n"
        except OSError:
            return False

    def loop() -> float:
        deadline = start + 30
        while time.monotonic() < deadline:
            t = time.monotonic()
            answered = answers()
            if answered == want_open and (want_open or not answers()):
                return t - start
            time.sleep(0.002)
        raise RuntimeError(f"{ip}:{port} never became {'open' if want_open else 'closed'}")

    return links.run_in(netns, loop)


def timed_change(change: Callable[[], object], outside: Path, want_open: bool) -> float:
    """Run `change` while a probe in a thread of its own polls RULE_PORT from `outside`."""
    result: list[float] = []
    start = time.monotonic()

    def poll() -> None:
        result.append(poll_until(outside, NODE_IP, RULE_PORT, want_open, start))

    poller = threading.Thread(target=poll)
    poller.start()
    change()
    poller.join()
    if not result:
        raise RuntimeError("the polling probe failed")
    return result[0]


# ---- scale ----------------------------------------------------------------------------------


def scale_spec(i: int) -> SandboxSpec:
    """Sandbox i of the scale test: 100 per network (a bridge takes at most 1024 ports)."""
    return netns_spec(f"s{i}", attachment(200 + i // 100, 2 + i % 100))


def wire_directly(net: NodeNetwork, specs: list[SandboxSpec]) -> None:
    """Namespaces and veths for `specs` by hutch.network's own link helpers, without applying
    the rules after each one (plug_netns would: n applies of a growing ruleset); `reconcile`
    then adopts them and applies the rules once, as an agent that restarts does."""

    def wire() -> None:
        with IPRoute() as ipr:
            existing = set(links.ours(ipr))
            for spec in specs:
                att = spec.networks[0]
                name = links.port_name(links.VETH_PREFIX, spec.id)
                if name in existing:
                    continue
                path = net.netns_path(spec.id)
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                links.create_netns(path)
                bridge = links.ensure_bridge(ipr, att, net.opts.mtu)
                links.create_veth(ipr, name, bridge, path, att, mtu=net.opts.mtu)

    links.run_in(net.opts.netns, wire)


@dataclass(frozen=True, slots=True)
class ScalePoint:
    machines: int
    apply_s: float  # reconcile: adopt every sandbox and replace the tables, once
    plug_one_s: float  # plug_netns of one more sandbox (its rules added to the tables)
    unplug_one_s: float  # unplug of that sandbox
    regroup_s: float  # set_groups: one sandbox into a security group, and out of it again
    mbps: tuple[float, ...]  # one flow between two of them, per run


# ---- the benchmark --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    vm_bytes: int  # per guest -> guest transfer
    host_bytes: int  # per namespace -> namespace transfer
    round_trips: int  # per round-trip figure
    toggles: int  # rule changes
    big: int  # sandboxes in the scale test

    @classmethod
    def of(cls, runs: int, quick: bool) -> "Sizes":
        if quick:
            return cls(2, 4 << 20, 64 << 20, 50, 4, 40)
        return cls(runs, 48 << 20, 1 << 30, 300, 20, 1000)


@dataclass
class Bench:
    lab: Lab
    probe: Probe
    root: PreparedRoot
    net: NodeNetwork
    driver: SandboxDriver
    node: Path
    outside: Path
    sizes: Sizes
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def opts(self) -> MicroVMOptions:
        backend = self.driver.backend
        assert isinstance(backend, MicroVMBackend)
        return backend.opts

    async def same_node(self) -> None:
        """Guest -> guest throughput, hutch against bare, and round trips direct and published."""
        a, b = attachment(7, 2), attachment(7, 3)
        for s in (vm_spec(self.root, "ha", a, f"{HOST_PORT}:{ECHO}"), vm_spec(self.root, "hb", b)):
            await self.driver.create(s)
            await self.driver.start(s.id)
        bare = self.lab.netns("b")
        links.run_in(bare, lambda: _plain_bridge_in("bb0", a.gateway4))
        vms: list[BareVM] = []
        try:
            for s, tap in (
                (vm_spec(self.root, "ba", a), "bt0"),
                (vm_spec(self.root, "bb", b), "bt1"),
            ):
                vms.append(await bare_vm(self.lab, self.opts, s, BareNIC(bare, "bb0", tap)))
            for sid in ("ha", "hb"):
                await asyncio.wait_for(wait_serving(self.driver, sid), 120)
            await asyncio.to_thread(self._same_node_runs, a, b, bare)
        finally:
            for vm in vms:
                await vm.close()
            for sid in ("ha", "hb"):
                await self.driver.destroy(sid, force=True)

    def _same_node_runs(self, a: Attachment, b: Attachment, bare: Path) -> None:
        sizes, node = self.sizes, self.node
        for ns in (node, bare):
            wait_port(ns, a.ip4, ECHO)
            control_send(ns, a.ip4, b.ip4, 1 << 20)  # warm-up: ARP, caches
        direct: list[float] = []
        published: list[float] = []
        outside: list[float] = []
        throttled: list[float] = []
        unread: list[bool] = []  # a cgroup's cpu.stat could not be read
        parent = self.opts.host.cgroup_parent

        # bytes and frames the sending guest's TAP took in during the transfers
        taps = {"hutch": (node, links.port_name(links.TAP_PREFIX, "ha")), "bare": (bare, "bt0")}
        frames = {name: [0, 0] for name in taps}

        def transfer(name: str, netns: Path) -> float:
            seen = rx_counters(*taps[name])
            mbps = control_send(netns, a.ip4, b.ip4, sizes.vm_bytes) * 8 / 1e6
            now = rx_counters(*taps[name])
            frames[name] = [frames[name][k] + now[k] - seen[k] for k in (0, 1)]
            return mbps

        def hutch_run() -> float:
            before = throttled_s(parent, ("ha", "hb"))
            mbps = transfer("hutch", node)
            after = throttled_s(parent, ("ha", "hb"))
            if before is None or after is None:
                unread.append(True)
            else:
                throttled.append(after - before)
            return mbps

        def each(i: int, mbps: dict[str, list[float]]) -> None:
            log(f"run {i + 1}/{sizes.runs}: guest->guest hutch {mbps['hutch'][-1]:.1f} Mbit/s, "
                f"bare {mbps['bare'][-1]:.1f}")  # fmt: skip

        runs = {"hutch": hutch_run, "bare": lambda: transfer("bare", bare)}
        mbps = alternate(runs, sizes.runs, each)
        hutch, plain = mbps["hutch"], mbps["bare"]
        # The round trips after the transfers, not between them: they load the hutch guest "ha"
        # alone (hundreds of connections, whose TIME_WAIT timers its TCG kernel then runs) and
        # the bare guests have no counterpart.
        for i in range(sizes.runs):
            n = sizes.round_trips
            direct.append(med(rtts_us(self.probe, node, a.ip4, ECHO, n)))
            published.append(med(rtts_us(self.probe, node, NODE_IP, HOST_PORT, n)))
            outside.append(med(rtts_us(self.probe, self.outside, NODE_IP, HOST_PORT, n)))
            log(
                f"run {i + 1}/{sizes.runs}: round trip p50 direct {direct[-1]:.0f} us, "
                f"published {published[-1]:.0f}, published from outside {outside[-1]:.0f}"
            )
        self.figures |= {
            "same_node_ratio": round(med(hutch) / med(plain), 3),
            "same_node_paired_ratio": paired_ratio(hutch, plain),
            "same_node_hutch_mbps": round(med(hutch), 1),
            "same_node_bare_mbps": round(med(plain), 1),
            "same_node_hutch_mbps_runs": [round(x) for x in hutch],
            "same_node_bare_mbps_runs": [round(x) for x in plain],
            # CPU quota (cgroup) throttling of the two hutch VMs during their transfers
            "same_node_hutch_throttled_s": None if unread else round(sum(throttled), 3),
            # the guests send TSO frames of this size on average: per-frame costs of the host's
            # path (bridge, nftables, conntrack) are paid once per this many bytes
            **{
                f"same_node_{name}_bytes_per_frame": round(sent / max(count, 1))
                for name, (sent, count) in frames.items()
            },
            "published_rtt_ratio": round(med(published) / med(direct), 3),
            "rtt_p50_direct_us": round(med(direct), 1),
            "rtt_p50_published_us": round(med(published), 1),
            "rtt_p50_published_from_outside_us": round(med(outside), 1),
            "vm_transfer_bytes": sizes.vm_bytes,
        }

    async def cross_node(self) -> None:
        """Guest -> guest across two nodes: hutch's overlay against a plain VXLAN, both between
        two node namespaces joined by a veth underlay, one guest on each node."""
        a, b = attachment(90, 2), attachment(90, 3)
        # VXLAN over a 1500-byte underlay leaves the guests 1450 (hutch's network_mtu, too).
        opts = dataclasses.replace(self.opts, mtu=VXLAN_MTU)
        # hutch: a NodeNetwork and a microvm driver per node, as two agents would have
        h1, h2 = self.lab.netns("x1"), self.lab.netns("x2")
        self.lab.link(h1, UNDERLAY[0], h2, UNDERLAY[1])
        nets: list[NodeNetwork] = []
        drivers: list[SandboxDriver] = []
        for i, ns in enumerate((h1, h2)):
            state = self.lab.work / f"x{i}"
            net = NodeNetwork(NetworkOptions(state, mtu=VXLAN_MTU, netns=ns, underlay=UNDERLAY[i]))
            backend = MicroVMBackend(
                dataclasses.replace(opts, host=dataclasses.replace(opts.host, network=net))
            )
            nets.append(net)
            drivers.append(SandboxDriver(backend, DriverOptions(state / "sandboxes")))
        specs = (vm_spec(self.root, "ca", a), vm_spec(self.root, "cb", b))
        # bare: plain bridges with a plain VXLAN port, in two namespaces of their own
        b1, b2 = self.lab.netns("y1"), self.lab.netns("y2")
        self.lab.link(b1, UNDERLAY[0], b2, UNDERLAY[1])
        links.run_in(b1, VxlanEnd(90, UNDERLAY[0], UNDERLAY[1], (b,), a.gateway4).make)
        links.run_in(b2, VxlanEnd(90, UNDERLAY[1], UNDERLAY[0], (a,)).make)
        vms: list[BareVM] = []
        try:
            for driver, spec in zip(drivers, specs, strict=True):
                await driver.create(spec)
                await driver.start(spec.id)
            # the controller's peer list, as every node gets it
            peers = [
                Peer(att.network_id, att.mac, att.ip4, att.ip6, UNDERLAY[i])
                for i, att in enumerate((a, b))
            ]
            for net in nets:
                await asyncio.to_thread(net.set_peers, peers)
            vms.append(await bare_vm(self.lab, opts, vm_spec(self.root, "ya", a),
                                     BareNIC(b1, "bb0", "yt0")))  # fmt: skip
            vms.append(await bare_vm(self.lab, opts, vm_spec(self.root, "yb", b),
                                     BareNIC(b2, "bb0", "yt0")))  # fmt: skip
            for driver, spec in zip(drivers, specs, strict=True):
                await asyncio.wait_for(wait_serving(driver, spec.id), 120)

            def runs() -> dict[str, list[float]]:
                for ns in (h1, b1):
                    wait_port(ns, a.ip4, ECHO)
                    control_send(ns, a.ip4, b.ip4, 1 << 20)  # warm-up
                size, runs = self.sizes.vm_bytes, self.sizes.runs

                def each(i: int, r: dict[str, list[float]]) -> None:
                    log(f"run {i + 1}/{runs}: across two nodes, hutch {r['hutch'][-1]:.1f} "
                        f"Mbit/s, bare VXLAN {r['bare'][-1]:.1f}")  # fmt: skip

                variants: dict[str, Callable[[], float]] = {
                    "hutch": lambda: control_send(h1, a.ip4, b.ip4, size) * 8 / 1e6,
                    "bare": lambda: control_send(b1, a.ip4, b.ip4, size) * 8 / 1e6,
                }
                return alternate(variants, runs, each)

            mbps = await asyncio.to_thread(runs)
        finally:
            for vm in vms:
                await vm.close()
            for driver, spec in zip(drivers, specs, strict=True):
                with contextlib.suppress(Exception):
                    await driver.destroy(spec.id, force=True)
                await driver.close()
            for net in nets:
                net.reconcile([])
        hutch, plain = mbps["hutch"], mbps["bare"]
        log(f"across two nodes: hutch {med(hutch):.1f} Mbit/s, bare VXLAN {med(plain):.1f}")
        self.figures |= {
            "cross_node_ratio": round(med(hutch) / med(plain), 3),
            "cross_node_paired_ratio": paired_ratio(hutch, plain),
            "cross_node_hutch_mbps": round(med(hutch), 1),
            "cross_node_bare_mbps": round(med(plain), 1),
            "cross_node_hutch_mbps_runs": [round(x) for x in hutch],
            "cross_node_bare_mbps_runs": [round(x) for x in plain],
        }

    def rule_changes(self) -> None:
        """A security group's ingress rule for the probe's port removed and added back, on a
        running sandbox published at RULE_PORT, polled from outside."""
        spec = netns_spec("rule", attachment(8, 2), f"{RULE_PORT}:{ECHO}")
        # the group keeps another rule throughout: only the probe's rule comes and goes
        other = Allow("tcp", 22, 22, ("0.0.0.0/0",))
        probe = Allow("tcp", ECHO, ECHO, (f"{OUTSIDE_IP}/32",))
        allowed = {spec.id: Groups((other, probe))}
        denied = {spec.id: Groups((other,))}
        self.net.set_groups(allowed)
        path = self.net.plug_netns(spec)
        self.lab.spawn(path, str(self.probe.binary), "serve", stdout=subprocess.DEVNULL)
        wait_port(self.outside, NODE_IP, RULE_PORT)
        times = []
        for i in range(self.sizes.toggles):
            want_open = i % 2 == 1
            change = functools.partial(self.net.set_groups, allowed if want_open else denied)
            times.append(timed_change(change, self.outside, want_open))
        self.net.unplug("rule")
        self.net.set_groups({})
        log(f"rule change to enforcement: median {med(times):.3f}s, max {max(times):.3f}s")
        self.figures |= {
            "rule_apply_p99_s": round(p99(times), 3),
            "rule_apply_p50_s": round(med(times), 3),
            "rule_apply_samples": len(times),
            "rule_change": "NodeNetwork.set_groups: the ingress rule letting the probe in to a "
            "running sandbox's published port removed / added back",
        }

    def scale_point(self, n: int) -> ScalePoint:
        net, sizes = self.net, self.sizes
        specs = [scale_spec(i) for i in range(n)]
        wire_directly(net, specs)
        start = time.monotonic()
        net.reconcile(specs)
        apply_s = time.monotonic() - start
        start = time.monotonic()
        net.plug_netns(netns_spec("extra", attachment(200, 250)))
        plug_one_s = time.monotonic() - start
        start = time.monotonic()
        net.unplug("extra")
        unplug_one_s = time.monotonic() - start
        start = time.monotonic()
        net.set_groups({"s0": Groups((Allow("tcp", ECHO, ECHO, ("10.0.0.0/8",)),))})
        net.set_groups({})
        regroup_s = (time.monotonic() - start) / 2
        src, dst = net.netns_path("s0"), net.netns_path("s1")
        to = specs[1].networks[0].ip4
        binary = str(self.probe.binary)
        server = self.lab.spawn(dst, binary, "serve", stdout=subprocess.DEVNULL)
        try:
            wait_port(src, to, ECHO)
            outs = [self.lab.run(src, binary, "send", to, str(sizes.host_bytes))
                    for _ in range(sizes.runs)]  # fmt: skip
        finally:
            server.kill()
            server.wait()
        mbps = tuple(float(o.split()[2]) * 8 / 1e6 for o in outs)
        point = ScalePoint(n, apply_s, plug_one_s, unplug_one_s, regroup_s, mbps)
        log(f"{n} sandboxes: reconcile {apply_s:.3f}s, plug one more {plug_one_s:.3f}s, "
            f"unplug it {unplug_one_s:.3f}s, a group change {regroup_s:.3f}s, "
            f"one flow {med(list(point.mbps)):.0f} Mbit/s")  # fmt: skip
        return point

    def scale(self) -> None:
        """10, then `big`, then 10 again (the flow's two sandboxes stay throughout)."""
        small1 = self.scale_point(10)
        large = self.scale_point(self.sizes.big)
        small2 = self.scale_point(10)
        small = med([*small1.mbps, *small2.mbps])
        self.figures |= {
            "rules_big_vs_10_ratio": round(med(list(large.mbps)) / small, 3),
            "scale_machines": large.machines,
            "scale_10_apply_s": round(small1.apply_s, 3),
            "scale_shrink_to_10_s": round(small2.apply_s, 3),
            "scale_big_apply_s": round(large.apply_s, 3),
            "scale_10_plug_one_s": round(med([small1.plug_one_s, small2.plug_one_s]), 3),
            "scale_big_plug_one_s": round(large.plug_one_s, 3),
            "scale_big_unplug_one_s": round(large.unplug_one_s, 3),
            "scale_big_group_change_s": round(large.regroup_s, 3),
            "scale_10_mbps": round(small),
            "scale_big_mbps": round(med(list(large.mbps))),
            "host_transfer_bytes": self.sizes.host_bytes,
        }


def rx_counters(netns: Path, name: str) -> tuple[int, int]:
    """Bytes and frames link `name` received (a TAP: what its guest sent)."""

    def read() -> tuple[int, int]:
        with IPRoute() as ipr:
            stats = ipr.get_links(ifname=name)[0].get_attr("IFLA_STATS64")
            return int(stats["rx_bytes"]), int(stats["rx_packets"])

    return links.run_in(netns, read)


def throttled_s(parent: str, sandbox_ids: tuple[str, ...]) -> float | None:
    """Seconds the sandboxes' CPU quota (vCPUs + CPU_HEADROOM) held QEMU back, in all; None if
    their cgroups' cpu.stat cannot be read."""
    layout = Layout.detect()
    base = layout.v2 if layout.v2 is not None else layout.v1.get("cpu")
    total = 0.0
    for sid in sandbox_ids:
        stat = base / parent / sid / "cpu.stat" if base else None
        if stat is None or not stat.exists():
            return None
        for line in stat.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "throttled_usec":
                total += int(value) / 1e6
            elif key == "throttled_time":  # v1: nanoseconds
                total += int(value) / 1e9
    return total


def _plain_bridge_in(name: str, address: str) -> None:
    with IPRoute() as ipr:
        plain_bridge(ipr, name, address)


def med(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def run(sizes: Sizes, work: Path) -> dict[str, object]:
    # A cgroup parent of the run's own: hutch's and the bare QEMUs' groups side by side in it,
    # and no other VMs of this machine (another run's, the tests') in the same group.
    parent = f"hutch-bench-{os.getpid()}"
    settings = config.load(state_dir=work / "state", cgroup_parent=parent)
    lab = Lab(tag=f"hbn{os.getpid() % 10000}", work=work)
    try:
        binary = build_static(PROBE_SOURCE, work / "netprobe")
        rootfs = build_busybox_rootfs(work / "rootfs")
        shutil.copy2(binary, rootfs / "bin" / "netprobe")
        root = prepare_root(rootfs, settings.cache_dir, disk=True)
        node, outside = lab.netns("n"), lab.netns("o")
        lab.link(node, NODE_IP, outside, OUTSIDE_IP)
        net = NodeNetwork(NetworkOptions(state_dir=work / "net", netns=node))
        driver = open_driver(settings, "microvm", network=net)
        bench = Bench(lab, Probe(lab, binary), root, net, driver, node, outside, sizes)
        bench.figures["accel"] = bench.opts.accel.name
        try:
            await bench.same_node()
            await bench.cross_node()
            bench.rule_changes()
            bench.scale()
        finally:
            for info in await driver.sandboxes():
                await driver.destroy(info.id, force=True)
            await driver.close()
            net.reconcile([])  # hutch's links, namespaces and tables
    finally:
        lab.close()  # the node namespace goes, and with it whatever reconcile left
        remove_parent(parent)
        for path in (work / "net" / "netns").glob("*"):
            links.remove_netns(path)
    return bench.figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per variant (median)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run, small figures")
    args = parser.parse_args()
    sizes = Sizes.of(args.runs, args.quick)
    work = Path(tempfile.mkdtemp(prefix="hbn", dir="/tmp"))
    try:
        figures = await run(sizes, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "same_node_ratio": figures.pop("same_node_ratio"),
        "cross_node_ratio": figures.pop("cross_node_ratio"),
        "published_rtt_ratio": figures.pop("published_rtt_ratio"),
        "rule_apply_p99_s": figures.pop("rule_apply_p99_s"),
        "rules_1000_vs_10_ratio": figures.pop("rules_big_vs_10_ratio"),
        **figures,
        "runs": sizes.runs,
        "quick": args.quick,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
