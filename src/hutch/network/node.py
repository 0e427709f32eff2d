"""The node's networks as one object: what the runtimes call to wire a sandbox, and what the
agent calls on start to make the node match the sandboxes that exist.

State held here is only a cache of the sandboxes' specs: links and rules are rebuilt from them
(`reconcile`), so a restarted agent converges instead of duplicating or leaking.
"""

import ipaddress
import logging
import os
import shutil
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from pyroute2 import IPRoute

from hutch.model.errors import Conflict, Unavailable, Unsupported
from hutch.model.network import PortMapping
from hutch.model.sandbox import SandboxSpec
from hutch.network import activity, links, nft
from hutch.network.dns import DnsServer, Listener

Kind = Literal["tap", "veth"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    state_dir: Path  # the containers' network namespaces are bind-mounted in state_dir/netns
    mtu: int = 1500
    # CIDRs no sandbox may reach even through NAT (the operator's list, the controller's and
    # this node's own addresses); the cluster's other addresses come with `set_infrastructure`.
    blocked: tuple[str, ...] = ()
    nft: str = "nft"
    # The network namespace the node's networking lives in (a path like /run/netns/NAME); None:
    # the agent's own. Tests and the cluster topology give agents namespaces of their own.
    netns: Path | None = None
    # This node's underlay address (an IP literal): the source of its VXLAN packets, the address
    # other nodes send this node's machines' frames to. None: no overlay (machines of a network
    # reach only those on the same node).
    underlay: str | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """A machine of a network, somewhere in the cluster (`Assignments.peers`)."""

    network_id: str
    mac: str
    ip4: str
    ip6: str
    underlay: str  # its node's address


class NicCounters(NamedTuple):
    """A sandbox's NICs' traffic, as it sees it."""

    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int

    def __add__(self, other: tuple[int, ...]) -> "NicCounters":  # type: ignore[override]
        return NicCounters(*(a + b for a, b in zip(self, other, strict=True)))


class Traffic(NamedTuple):
    """A sandbox's NICs' traffic, and the part of it that left or came from outside its
    networks."""

    total: NicCounters
    public: NicCounters


def read_traffic(netns: Path | None, nft_cmd: str, ports: dict[str, str]) -> dict[str, Traffic]:
    """The traffic of each owner of `ports` (interface -> owner, a sandbox) in `netns`: its
    interfaces' counters and hutch's `pub-*` counters of them (see `NodeNetwork.traffic`)."""

    def read() -> tuple[str, dict[str, tuple[int, int]]]:
        # /proc/thread-self: this thread's namespace (/proc/net is the process's).
        return Path("/proc/thread-self/net/dev").read_text(), nft.counters(nft_cmd)

    dev, counted = links.run_in(netns, read)
    public: dict[str, NicCounters] = {}
    for port, owner in ports.items():
        rx_packets, rx_bytes = counted.get(f"pub-in-{port}", (0, 0))
        tx_packets, tx_bytes = counted.get(f"pub-out-{port}", (0, 0))
        mine = NicCounters(rx_bytes, tx_bytes, rx_packets, tx_packets)
        public[owner] = public[owner] + mine if owner in public else mine
    return {
        owner: Traffic(total, public.get(owner, NicCounters(0, 0, 0, 0)))
        for owner, total in nic_counters(dev, ports).items()
    }


def nic_counters(dev: str, ports: dict[str, str]) -> dict[str, NicCounters]:
    """Each owner's interfaces' counters, summed, from a /proc/net/dev listing: `ports` maps an
    interface to its owner (a sandbox), and what the port received its sandbox sent."""
    out: dict[str, NicCounters] = {}
    for line in dev.splitlines()[2:]:
        name, _, numbers = line.partition(":")
        owner = ports.get(name.strip())
        fields = numbers.split()
        if owner is None or len(fields) < 10:
            continue
        mine = NicCounters(int(fields[8]), int(fields[0]), int(fields[9]), int(fields[1]))
        out[owner] = out[owner] + mine if owner in out else mine
    return out


@dataclass(frozen=True, slots=True)
class _Wired:
    spec: SandboxSpec
    kind: Kind


class NodeNetwork:
    """Bridges, TAPs, veths, namespaces and nftables for this node's sandboxes."""

    def __init__(self, opts: NetworkOptions, dns: DnsServer | None = None) -> None:
        self.opts = opts
        # Answers each network's names on its bridge's gateway; told whenever bridges change.
        self.dns = dns
        self._lock = threading.Lock()
        self._wired: dict[str, _Wired] = {}
        # Sandbox id -> its security groups' rules (absent: in no group).
        self._groups: dict[str, nft.Groups] = {}
        self._peers: tuple[Peer, ...] = ()
        # The cluster's nodes' and controllers' addresses (CIDRs), blocked beside opts.blocked.
        self._infrastructure: tuple[str, ...] = ()
        self._netns_dir = opts.state_dir / "netns"
        # Sandbox id -> a bound socket per published port it holds (see `_hold`): only a port
        # held is forwarded, so a machine never takes a port something on the node listens on.
        self._held: dict[str, dict[PortMapping, socket.socket]] = {}
        # What hutch's tables hold now (the last state applied); None: unknown or no tables,
        # and the next change replaces them whole.
        self._applied: nft.Desired | None = None
        # The VXLAN devices made for the hosted networks (reconcile lists the node's own).
        self._overlay_devices: set[str] = set()
        # Sandboxes suspended for idling (`set_asleep`): their published ports are not
        # forwarded, so a new connection reaches the port's held socket, where the waker is.
        self._asleep: frozenset[str] = frozenset()

    def netns_path(self, sandbox_id: str) -> Path:
        return self._netns_dir / sandbox_id

    # -- what the runtimes call (blocking: call from a thread) ----------------------------------

    def open_taps(self, spec: SandboxSpec) -> list[int]:
        """A TAP per NIC of the sandbox, down and on no bridge until `wire_taps`: one open
        descriptor each (for QEMU; the caller closes them once QEMU has its copies). On failure
        nothing is left."""
        return links.run_in(self.opts.netns, lambda: self._open_taps(spec))

    def wire_taps(self, spec: SandboxSpec) -> None:
        """The sandbox's TAPs (`open_taps`) on its networks' bridges, up, with their rules in
        force. On failure its links are gone (`unplug` it still)."""
        links.run_in(self.opts.netns, lambda: self._wire_taps(spec))

    def plug_netns(self, spec: SandboxSpec) -> Path:
        """A network namespace with the sandbox's NIC as eth0, configured; its path, for crun.
        On failure nothing is left."""
        return links.run_in(self.opts.netns, lambda: self._plug_netns(spec))

    def unplug(self, sandbox_id: str) -> None:
        """Remove the sandbox's links, namespace and rules; bridges nobody uses any more go too.
        Unknown ids are not an error."""
        links.run_in(self.opts.netns, lambda: self._unplug(sandbox_id))

    def unwire_taps(self, sandbox_id: str) -> None:
        """Like `unplug` (its ports, rules and unused bridges go), but its TAPs stay, off their
        bridges and down: a parked QEMU holds them, and `wire_taps` puts them back."""
        links.run_in(self.opts.netns, lambda: self._unplug(sandbox_id, keep_taps=True))

    def reconcile(self, specs: list[SandboxSpec], suspended: Iterable[str] = ()) -> None:
        """Make the node exactly what `specs` (the sandboxes that exist) need: hutch's links,
        namespaces and tables that nothing needs are removed; nothing of anyone else's is.
        The `suspended` micro-VMs are wired though their TAPs went with their QEMU: their
        published ports stay held (a waker accepts on them while they sleep)."""
        kept = frozenset(suspended)
        links.run_in(self.opts.netns, lambda: self._reconcile(specs, kept))

    def close(self) -> None:
        """Let go of the published ports' sockets, as the agent's exit does; links, rules and
        sandboxes stay (the next agent's `reconcile` binds the ports again)."""
        with self._lock:
            self._release_all()

    def set_groups(self, groups: dict[str, nft.Groups]) -> bool:
        """The security groups' rules of each sandbox in one (sandboxes not named are in
        none), for the sandboxes wired now and those plugged later. A change is applied at
        once, to running sandboxes too; whether anything changed."""
        return links.run_in(self.opts.netns, lambda: self._set_groups(groups))

    def set_peers(self, peers: Iterable[Peer]) -> None:
        """The cluster's machines on the networks this node hosts (the whole set, every time):
        each hosted network's VXLAN device gets exactly the entries for those on other nodes.
        Idempotent: entries already right are left alone, entries of peers gone are removed.
        Their nodes' underlay addresses are the only ones VXLAN is accepted from."""
        peers = tuple(peers)
        links.run_in(self.opts.netns, lambda: self._set_peers(peers))

    def set_infrastructure(self, cidrs: Iterable[str]) -> bool:
        """The cluster's nodes' and controllers' addresses (the whole set, every time), which
        no sandbox may reach, beside `NetworkOptions.blocked`: a change is applied at once
        (the blocked sets' elements, in one transaction; the sandboxes stay plugged, their
        connections up). Whether anything changed."""
        wanted = tuple(sorted(set(cidrs)))
        return links.run_in(self.opts.netns, lambda: self._set_infrastructure(wanted))

    def set_asleep(self, sandbox_ids: Iterable[str]) -> dict[str, dict[PortMapping, socket.socket]]:
        """Sandboxes whose published ports are not forwarded (the whole set, every time):
        a new connection to one of them is taken by the socket that holds the port (`_hold`)
        and waits in its accept queue; connections under way keep their forwarding. For each
        sandbox that was not asleep before, a duplicate of each of its held TCP ports' sockets
        (the caller accepts from it, and closes it)."""
        asleep = frozenset(sandbox_ids)
        return links.run_in(self.opts.netns, lambda: self._set_asleep(asleep))

    def flows(self, targets: Iterable[activity.Target]) -> list[activity.Flow]:
        """The connections to `targets` (a sandbox's protocol, address and port) that the
        node's connection tracking has now."""
        wanted = list(targets)
        return links.run_in(self.opts.netns, lambda: activity.read_flows(wanted))

    def traffic(self) -> dict[str, Traffic]:
        """Each wired sandbox's traffic, as the sandbox sees it: its NICs' counters, summed
        (what its TAP or veth received, the sandbox sent), and of that what the node routed
        out of its networks or in from outside them (nftables' `pub-*` counters, which start
        again from zero when hutch's tables are replaced whole). One read of the namespace's
        interfaces and one of hutch's counters."""
        with self._lock:
            ports = {
                links.port_name(links.TAP_PREFIX if w.kind == "tap" else links.VETH_PREFIX, i, n): i
                for i, w in self._wired.items()
                for n in range(len(w.spec.networks))
            }
        return read_traffic(self.opts.netns, self.opts.nft, ports)

    def admits(self, sandbox_id: str, port: int, remote: str) -> bool:
        """Whether the sandbox's security groups let a new TCP connection to its `port` from
        `remote` in (in no group: yes): the waker hands on only those its rules would."""
        groups = self._groups.get(sandbox_id)
        return groups is None or any(a.admits("tcp", port, remote) for a in groups.ingress)

    def waker_socket(self) -> socket.socket:
        """A TCP socket in the node's network namespace (the sandboxes' addresses are reached
        from there), not connected, marked as the waker's: its connection to a sandbox does not
        meet the sandbox's security groups again (see `admits`)."""

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, nft.WAKER_MARK)
            return sock

        return links.run_in(self.opts.netns, make)

    # -- internals -----------------------------------------------------------------------------

    def _open_taps(self, spec: SandboxSpec) -> list[int]:
        _one_nic(spec)
        fds: list[int] = []
        with self._lock, IPRoute() as ipr:
            self._wired[spec.id] = _Wired(spec, "tap")
            try:
                for index in range(len(spec.networks)):
                    name = links.port_name(links.TAP_PREFIX, spec.id, index)
                    links.delete_link(ipr, name)  # a leftover of an earlier life of this id
                    fds.append(links.create_tap(name))
            except BaseException:
                for fd in fds:
                    os.close(fd)
                self._unwire(ipr, spec.id)
                raise
        return fds

    def _wire_taps(self, spec: SandboxSpec) -> None:
        with self._lock, IPRoute() as ipr:
            self._wired[spec.id] = _Wired(spec, "tap")  # again, for TAPs kept by unwire_taps
            try:
                links.enable_forwarding()
                for index, att in enumerate(spec.networks):
                    bridge = links.ensure_bridge(ipr, att, self.opts.mtu)
                    name = links.port_name(links.TAP_PREFIX, spec.id, index)
                    links.enslave(ipr, name, bridge, self.opts.mtu, att.mac)
                self._hold(spec, strict=True)
                self._apply()
                self._sync_overlay(ipr, _vnis(spec))
            except BaseException:
                self._unwire(ipr, spec.id)
                raise

    def _plug_netns(self, spec: SandboxSpec) -> Path:
        _one_nic(spec)
        path = self.netns_path(spec.id)
        with self._lock, IPRoute() as ipr:
            self._wired[spec.id] = _Wired(spec, "veth")
            try:
                links.enable_forwarding()
                self._netns_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                links.remove_netns(path)
                links.create_netns(path)
                for index, att in enumerate(spec.networks):
                    bridge = links.ensure_bridge(ipr, att, self.opts.mtu)
                    name = links.port_name(links.VETH_PREFIX, spec.id, index)
                    links.delete_link(ipr, name)
                    links.create_veth(ipr, name, bridge, path, att, mtu=self.opts.mtu)
                self._hold(spec, strict=True)
                self._apply()
                self._sync_overlay(ipr, _vnis(spec))
            except BaseException:
                self._unwire(ipr, spec.id)
                raise
        return path

    def _set_groups(self, groups: dict[str, nft.Groups]) -> bool:
        with self._lock:
            if groups == self._groups:
                return False
            # Only the wired sandboxes' groups are in the tables (no listing of all ports twice)
            changed = any(
                groups.get(i) != self._groups.get(i) for i in groups.keys() | self._groups.keys()
                if i in self._wired
            )  # fmt: skip
            self._groups = dict(groups)
            if changed:
                self._apply()
            return True

    def _set_asleep(self, asleep: frozenset[str]) -> dict[str, dict[PortMapping, socket.socket]]:
        with self._lock:
            before, self._asleep = self._asleep, asleep
            if asleep != before and self._wired:
                self._apply()
            return {
                sandbox_id: {p: sock.dup() for p, sock in held.items() if p.protocol == "tcp"}
                for sandbox_id, held in self._held.items()
                if sandbox_id in asleep - before
            }

    def _set_infrastructure(self, cidrs: tuple[str, ...]) -> bool:
        with self._lock:
            if cidrs == self._infrastructure:
                return False
            self._infrastructure = cidrs
            if self._wired:  # no tables without sandboxes: the next plug applies it
                self._apply()
            return True

    def _set_peers(self, peers: tuple[Peer, ...]) -> None:
        with self._lock, IPRoute() as ipr:
            before = self._desired()
            self._peers = peers
            if self._desired() != before:  # a peer node came or went
                self._apply()
            self._sync_overlay(ipr)

    def _unplug(self, sandbox_id: str, keep_taps: bool = False) -> None:
        with self._lock, IPRoute() as ipr:
            self._unwire(ipr, sandbox_id, keep_taps)

    def _reconcile(self, specs: list[SandboxSpec], suspended: frozenset[str]) -> None:
        with self._lock, IPRoute() as ipr:
            self._wired.clear()
            self._release_all()
            existing = set(links.ours(ipr))
            for spec in specs:
                if not spec.networks:
                    continue
                tap = links.port_name(links.TAP_PREFIX, spec.id)
                veth = links.port_name(links.VETH_PREFIX, spec.id)
                if tap in existing or spec.id in suspended:
                    self._wired[spec.id] = _Wired(spec, "tap")
                elif veth in existing and self.netns_path(spec.id).exists():
                    self._wired[spec.id] = _Wired(spec, "veth")
            desired = self._desired()
            keep = {b.name for b in desired.bridges} | {p.name for p in desired.ports}
            keep |= set(self._vxlans())
            links.delete_links(ipr, existing - keep)
            self._overlay_devices = {n for n in existing & keep if n.startswith(links.VXLAN_PREFIX)}
            if self._netns_dir.is_dir():
                for path in self._netns_dir.iterdir():
                    wired = self._wired.get(path.name)
                    if wired is None or wired.kind != "veth":
                        links.remove_netns(path)
            if self._wired:
                links.enable_forwarding()
            for wired in self._wired.values():
                self._hold(wired.spec, strict=False)
            networks = {a.vni: a for w in self._wired.values() for a in w.spec.networks}
            for att in networks.values():  # once per network, not per sandbox
                links.ensure_bridge(ipr, att, self.opts.mtu)
            self._applied = None  # whatever the tables hold: replaced whole
            self._apply()
            self._sync_overlay(ipr)

    def _unwire(self, ipr: IPRoute, sandbox_id: str, keep_taps: bool = False) -> None:
        wired = self._wired.pop(sandbox_id, None)
        self._release(sandbox_id)
        errors: list[BaseException] = []
        for prefix in (links.TAP_PREFIX, links.VETH_PREFIX):
            for index in range(max(len(wired.spec.networks), 1) if wired else 1):
                name = links.port_name(prefix, sandbox_id, index)
                if keep_taps and prefix == links.TAP_PREFIX:
                    links.detach(ipr, name)
                else:
                    links.delete_link(ipr, name)
        try:
            links.remove_netns(self.netns_path(sandbox_id))
        except OSError as e:
            errors.append(e)
        # Its networks' bridges, if nobody else uses them (reconcile removes any other stale one:
        # listing the node's links here would make every unplug cost as much as all of them).
        used = {links.bridge_name(a.vni) for w in self._wired.values() for a in w.spec.networks}
        for vni in _vnis(wired.spec) if wired else ():
            if links.bridge_name(vni) not in used:
                links.delete_link(ipr, links.bridge_name(vni))
        self._apply()
        try:
            self._sync_overlay(ipr, _vnis(wired.spec) if wired else ())
        except Exception as e:
            errors.append(e)
        if errors:
            raise errors[0]

    def _vxlans(self) -> dict[str, int]:
        """The VXLAN devices the node should have: one per hosted network, if it has an
        underlay address."""
        if self.opts.underlay is None:
            return {}
        vnis = {a.vni for w in self._wired.values() for a in w.spec.networks}
        return {links.vxlan_name(vni): vni for vni in vnis}

    def _sync_overlay(self, ipr: IPRoute, only: Iterable[int] | None = None) -> None:
        """VXLAN devices for exactly the hosted networks (none left of networks gone, whose
        entries go with them), each with exactly its remote peers' entries. `only`: the VNIs of
        a sandbox plugged or unplugged, the only networks whose devices may have to come or go
        (the peers did not change): the others are left alone."""
        wanted = self._vxlans()
        gone = self._overlay_devices - set(wanted)  # reconcile found those of an earlier life
        for name in sorted(gone):
            links.delete_link(ipr, name)
        self._overlay_devices -= gone
        if only is not None:
            wanted = {n: vni for n, vni in wanted.items() if vni in set(only)}
        if not wanted:
            return
        local = self.opts.underlay
        assert local is not None
        vni_of = {a.network_id: a.vni for w in self._wired.values() for a in w.spec.networks}
        remotes: dict[int, set[links.Remote]] = {vni: set() for vni in wanted.values()}
        for p in self._peers:
            vni = vni_of.get(p.network_id)
            if vni not in remotes or not _same_family(p.underlay, local) or p.underlay == local:
                continue  # not hosted here (or not synced now), on this node, or unreachable
            remotes[vni].add(links.Remote(p.mac.lower(), p.ip4, p.ip6, p.underlay))
        for vni, found in sorted(remotes.items()):
            self._overlay_devices.add(
                links.ensure_vxlan(ipr, vni, links.bridge_name(vni), local, self.opts.mtu)
            )
            links.sync_remotes(ipr, vni, found)

    def _desired(self) -> nft.Desired:
        bridges: dict[str, nft.Bridge] = {}
        ports: list[nft.Port] = []
        published: list[nft.Published] = []
        for sandbox_id, wired in sorted(self._wired.items()):
            prefix = links.TAP_PREFIX if wired.kind == "tap" else links.VETH_PREFIX
            for index, att in enumerate(wired.spec.networks):
                bridge = links.bridge_name(att.vni)
                bridges[bridge] = nft.Bridge(
                    bridge, att.gateway4, att.prefix4, att.gateway6, att.prefix6,
                    att.egress, att.egress_allow,
                )  # fmt: skip
                name = links.port_name(prefix, sandbox_id, index)
                groups = self._groups.get(sandbox_id)
                ingress, egress = (groups.ingress, groups.egress) if groups else (None, None)
                ports.append(nft.Port(name, bridge, att.mac, att.ip4, att.ip6, ingress, egress))
            first = wired.spec.networks[0]
            held = self._held.get(sandbox_id, {}) if sandbox_id not in self._asleep else {}
            published += [
                nft.Published(p.host_port, p.protocol, first.ip4, p.port, p.host_ip)
                for p in wired.spec.ports
                if p in held
            ]
        return nft.Desired(
            tuple(bridges.values()), tuple(ports), tuple(published),
            (*self.opts.blocked, *self._infrastructure), self._overlay(),
        )  # fmt: skip

    def _overlay(self) -> nft.Overlay | None:
        """The hosted networks' VNIs and the underlay addresses of the other nodes hosting
        them (the only ones their VXLAN packets are taken from)."""
        vxlans = self._vxlans()
        if not vxlans:
            return None
        hosted = {a.network_id for w in self._wired.values() for a in w.spec.networks}
        local = self.opts.underlay
        assert local is not None
        peers = {
            p.underlay
            for p in self._peers
            if p.network_id in hosted and p.underlay != local and _same_family(p.underlay, local)
        }
        return nft.Overlay(tuple(sorted(vxlans.values())), tuple(sorted(peers)))

    def _apply(self) -> None:
        """Make hutch's tables the desired state's: only what changed since the last state
        applied (one transaction: set elements, the changed ports' chains), or, when that is
        unknown (agent start, reconcile) or the change fails, the whole tables anew (one
        transaction too)."""
        desired = self._desired()
        applied, self._applied = self._applied, None  # unknown until nft has taken it
        if not (desired.bridges or desired.ports):
            if shutil.which(self.opts.nft) is not None:  # a node without nft has no tables
                nft.apply(nft.removal(), self.opts.nft)
        elif applied is None:
            nft.apply(nft.ruleset(desired), self.opts.nft)
            self._applied = desired
        else:
            batch = nft.changes(applied, desired)
            try:
                if batch is not None:
                    nft.apply(batch, self.opts.nft)
            except Unavailable as e:  # tables changed behind hutch's back, say: replaced
                log.warning("updating hutch's nftables tables failed, replacing them: %s", e)
                nft.apply(nft.ruleset(desired), self.opts.nft)
            self._applied = desired
        if self.dns is not None:  # in this thread: in the node's namespace, as the bridges are
            self.dns.listen(self._listeners())

    def _hold(self, spec: SandboxSpec, *, strict: bool) -> None:
        """Bind each of the sandbox's published ports on the node (its HOST_IP, else every
        IPv4 address), as Docker's proxy does, and keep the sockets while it is wired. A port
        something on the node listens on (sshd, the controller, the agent) or a HOST_IP that is
        not one of the node's addresses cannot be bound: forwarding it would take the node's
        own connections to that service or address. `strict` (a sandbox being plugged): refuse
        the sandbox. Otherwise (a sandbox re-adopted on agent start, whose port something took
        while the agent was away): leave that port unpublished, say so in the log."""
        held = self._held.setdefault(spec.id, {})
        for p in spec.ports:
            if p in held:
                continue
            try:
                held[p] = _bind(p)
            except OSError as e:
                where = f"{p.host_ip or '0.0.0.0'}:{p.host_port}/{p.protocol}"
                if strict:
                    self._release(spec.id)
                    raise Conflict(
                        f"host port {where} cannot be published on this node: {e.strerror} "
                        "(something on the node uses it, or the address is not the node's)"
                    ) from None
                log.warning("sandbox %s: host port %s not published: %s", spec.id, where, e)

    def _release(self, sandbox_id: str) -> None:
        for sock in self._held.pop(sandbox_id, {}).values():
            sock.close()

    def _release_all(self) -> None:
        for sandbox_id in list(self._held):
            self._release(sandbox_id)

    def _listeners(self) -> list[Listener]:
        out: dict[str, Listener] = {}
        for wired in self._wired.values():
            for att in wired.spec.networks:
                out[att.network_id] = Listener(
                    att.network_id, links.bridge_name(att.vni), att.gateway4, att.gateway6
                )
        return list(out.values())


def _bind(p: PortMapping) -> socket.socket:
    """A socket holding `p`'s host port, in this thread's (the node's) network namespace.
    TCP listens (SO_REUSEADDR: a port in TIME_WAIT is free; a listener already there is not,
    and nothing can listen there later); it is not accepted from, as every connection to
    the port is forwarded before it, unless the sandbox sleeps (`set_asleep`). UDP binds
    without SO_REUSEADDR, so nothing binds after."""
    kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    try:
        if p.protocol == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((p.host_ip or "0.0.0.0", p.host_port))
        if p.protocol == "tcp":
            sock.listen(64)  # connections wait here while the sandbox sleeps (set_asleep)
    except BaseException:
        sock.close()
        raise
    return sock


def _same_family(address: str, local: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        log.debug("peer underlay %r is not an IP address: no overlay to it", address)
        return False
    return ip.version == ipaddress.ip_address(local).version


def _vnis(spec: SandboxSpec) -> set[int]:
    return {a.vni for a in spec.networks}


def _one_nic(spec: SandboxSpec) -> None:
    if len(spec.networks) > 1:
        raise Unsupported("a sandbox on more than one network is not supported yet")
