"""The node's packet filter and NAT: a pure function of the desired state, applied atomically.

hutch owns two tables, `inet hutch` and `bridge hutch`, and nothing else: `ruleset` replaces
both in one transaction (`nft -j -f -`: add, delete and re-add each table in one batch), and
`changes` turns one state's tables into another's, changing only what differs (set elements,
the chains of the ports that changed), in one transaction too; so a packet sees either the old
rules or the new ones, and rules hutch did not make are never touched.

The cost per packet does not grow with the number of machines: every per-machine decision is one
map lookup (a verdict map keyed by port name, a DNAT map keyed by protocol and port), and each
port's own chain holds a constant number of rules.

    bridge hutch   prerouting: a frame from a port jumps to that port's chain (anti-spoofing: its
                   MAC, its IPv4 for IP and ARP, its IPv6 and link-local for IPv6 and NDP, no
                   router advertisements); a frame from a port with no chain is dropped.
                   forward: `oifname vmap @ingress`, one chain per port (security groups).
    inet hutch     prerouting (raw): from a hutch bridge, 127/8 and ::1 are dropped either way.
                   input: from a hutch bridge, only DNS to that bridge's gateway (and NDP)
                   gets in; VXLAN of a hosted VNI only from the peer nodes' underlay addresses.
                   forward: security groups first (`in-PORT` by bridge and destination,
                   `out-PORT` by bridge and source); between hutch bridges nothing; to 127/8,
                   169.254/16 and the blocked infrastructure addresses (named sets
                   `blocked4`/`blocked6`: the cluster's nodes and controllers) nothing, nor to UDP
                   4789 anywhere (the overlay's port: another node would take it as a
                   peer's); egress per bridge (`iifname vmap @egress`);
                   to a bridge only replies and published ports.
                   output: the node's own connections to a sandbox in groups meet its
                   `in-PORT` too (127.0.0.1 to a published port), looked up by address;
                   but the waker's (marked), whose clients were checked already.
                   nat: DNAT of published ports (prerouting for other hosts, output for the node
                   itself, 127.0.0.1 included), masquerade of egress and of 127/8 sources.
"""

import functools
import ipaddress
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hutch.model.errors import Unavailable

TABLE = "hutch"
BRIDGE_PREFIX = "hn-"
PORT_PREFIXES = ("ht-", "hv-")  # TAPs (micro-VMs), veth host ends (containers)
VXLAN_PORT = 4789  # the overlay's UDP port, on every node (hutch.network.links)
# SO_MARK of the node agent's own connections to a sandbox that its groups admitted already.
WAKER_MARK = 0x68757463
ALWAYS_BLOCKED4 = ("127.0.0.0/8", "169.254.0.0/16")
ALWAYS_BLOCKED6 = ("::1/128", "fe80::/10")

Json = dict[str, Any]
# Ports (and groups' rule sets) whose chains' rules are kept built: more than a node has.
_CACHED = 8192


@dataclass(frozen=True, slots=True)
class Bridge:
    """One network on this node."""

    name: str  # hn-<vni hex>
    gateway4: str
    prefix4: int
    gateway6: str
    prefix6: int
    egress: str = "nat"  # "nat" | "deny" | "allow-list"
    egress_allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Allow:
    """One rule of a security group, as the node enforces it: packets of `protocol` ("any",
    "tcp", "udp", "icmp") to a port in port_min..port_max (0..0: any), from an address in
    `remotes` (ingress: to the sandbox) or to one (egress: from the sandbox); remotes are CIDRs
    of both families, a remote group's members as /32s and /128s. No remotes: the rule matches
    nothing (a remote group with no machines)."""

    protocol: str = "any"
    port_min: int = 0
    port_max: int = 0
    remotes: tuple[str, ...] = ()

    def admits(self, protocol: str, port: int, remote: str) -> bool:
        """Whether this rule lets a new connection of `protocol` to `port` from `remote` (an
        address) in, as its rules in `_group_rules` do: for what reaches a sandbox other than
        through its chains (the waker's held connections)."""
        if self.protocol not in ("any", protocol):
            return False
        if (self.port_min or self.port_max) and not (
            self.port_min <= port <= (self.port_max or self.port_min)
        ):
            return False
        address = ipaddress.ip_address(remote)
        return any(address in ipaddress.ip_network(c) for c in self.remotes)


@dataclass(frozen=True, slots=True)
class Groups:
    """A sandbox's security groups as the node enforces them: their ingress rules, and their
    egress rules if any of them has one (None: egress is its network's; see `Port`)."""

    ingress: tuple[Allow, ...] = ()
    egress: tuple[Allow, ...] | None = None


@dataclass(frozen=True, slots=True)
class Port:
    """One sandbox NIC on a bridge: the host end of its TAP or veth."""

    name: str  # ht-... / hv-...
    bridge: str
    mac: str
    ip4: str
    ip6: str
    # The sandbox's security groups' ingress rules; None: it is in no group, and everything its
    # network's machines send gets in (and, routed by the node, replies and published ports).
    ingress: tuple[Allow, ...] | None = None
    # Its security groups' egress rules; None: none of its groups has one (or it is in none),
    # and what it sends meets its network's egress policy only. Otherwise only what one of
    # them allows leaves it (replies aside), to its network's machines too.
    egress: tuple[Allow, ...] | None = None

    @property
    def link_local6(self) -> str:
        """The EUI-64 link-local address the guest's kernel gives itself from `mac`."""
        octets = [int(x, 16) for x in self.mac.split(":")]
        eui = [octets[0] ^ 2, *octets[1:3], 0xFF, 0xFE, *octets[3:]]
        return str(ipaddress.IPv6Address(bytes([0xFE, 0x80, *[0] * 6, *eui])))


@dataclass(frozen=True, slots=True)
class Published:
    """A node port forwarded to a sandbox's address."""

    host_port: int
    protocol: str  # tcp | udp
    ip4: str  # the sandbox's address
    port: int
    host_ip: str = ""  # "": every local address of the node


@dataclass(frozen=True, slots=True)
class Overlay:
    """The VXLAN networks this node hosts, and who may send it their frames."""

    vnis: tuple[int, ...]  # one per hosted network (its VXLAN device's VNI)
    # The underlay addresses of the nodes hosting machines of those networks (IPv4 or IPv6):
    # VXLAN packets of those VNIs from any other address are dropped before decapsulation.
    peers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Desired:
    bridges: tuple[Bridge, ...] = ()
    ports: tuple[Port, ...] = ()
    published: tuple[Published, ...] = ()
    # CIDRs no sandbox may reach even through NAT: every node's and controller's address of the
    # cluster, the operator's `network_blocked`. 127/8, 169.254/16, ::1 and fe80::/10 are
    # always blocked. Overlaps are fine (merged).
    blocked: tuple[str, ...] = field(default_factory=tuple)
    overlay: Overlay | None = None  # None: no VXLAN here


# ---- expression helpers (nft's JSON schema, libnftables-json(5)) -----------------------------


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _payload(protocol: str, fld: str) -> Json:
    return {"payload": {"protocol": protocol, "field": fld}}


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _set(values: Iterable[Any]) -> Json:
    return {"set": list(values)}


def _prefix(cidr: str) -> Json:
    net = ipaddress.ip_network(cidr)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _concat(*items: Any) -> Json:
    return {"concat": list(items)}


ACCEPT: Json = {"accept": None}
DROP: Json = {"drop": None}
RETURN: Json = {"return": None}


def _jump(chain: str) -> Json:
    return {"jump": {"target": chain}}


class _Table:
    """One table's objects: chains (declaration and rules, in order) and named sets and maps
    (declaration and elements), each by name. `commands` sends them whole; `changes` only
    what differs from another state's."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.chains: dict[str, Json] = {}
        self.rules: dict[str, list[list[Json]]] = {}
        self.sets: dict[str, Json] = {}  # {"map": ...} or {"set": ...}, without elements
        self.elems: dict[str, list[Any]] = {}

    def chain(self, name: str, hook: str = "", kind: str = "filter", prio: int = 0) -> str:
        chain: Json = {"family": self.family, "table": TABLE, "name": name}
        if hook:
            chain.update(type=kind, hook=hook, prio=prio, policy="accept")
        self.chains[name] = {"chain": chain}
        self.rules[name] = []
        return name

    def map(self, name: str, key: str | list[str], data: str, elems: list[Any]) -> str:
        m: Json = {"family": self.family, "table": TABLE, "name": name, "type": key, "map": data}
        self.sets[name] = {"map": m}
        self.elems[name] = elems
        return name

    def set(
        self, name: str, key: str | list[str], elems: list[Any], flags: tuple[str, ...] = ()
    ) -> str:
        st: Json = {"family": self.family, "table": TABLE, "name": name, "type": key}
        if flags:
            st["flags"] = list(flags)
        self.sets[name] = {"set": st}
        self.elems[name] = elems
        return name

    def counter(self, name: str) -> str:
        """A named counter: declared with the sets and maps, before the maps that name it."""
        self.sets[name] = {"counter": {"family": self.family, "table": TABLE, "name": name}}
        self.elems[name] = []
        return name

    def rule(self, chain: str, *expr: Json) -> None:
        self.rules[chain].append(list(expr))

    def _rule(self, chain: str, expr: list[Json]) -> Json:
        return {"rule": {"family": self.family, "table": TABLE, "chain": chain, "expr": expr}}

    def _set_with(self, name: str, elems: list[Any]) -> Json:
        ((kind, decl),) = self.sets[name].items()
        return {kind: {**decl, "elem": elems}} if elems else self.sets[name]

    def _element(self, name: str, elems: list[Any]) -> Json:
        return {"element": {"family": self.family, "table": TABLE, "name": name, "elem": elems}}

    def commands(self) -> list[Json]:
        table = {"table": {"family": self.family, "name": TABLE}}
        # add + delete: delete must find the table, and the whole batch is one transaction.
        return [
            {"add": table},
            {"delete": table},
            {"add": table},
            *({"add": c} for c in self.chains.values()),  # before the maps that jump to them
            *({"add": self._set_with(n, self.elems[n])} for n in self.sets),
            *({"add": self._rule(c, r)} for c in self.chains for r in self.rules[c]),
        ]

    def changes(self, old: "_Table") -> list[Json] | None:
        """The commands that turn `old` (this family's table as nft has it) into this one,
        touching only what differs: elements added and deleted, chains added, deleted or
        flushed and refilled. Their order lets nft take them as one transaction: nothing
        jumps to a chain or refers to a set that is not there yet or any more. None: a chain's
        or a set's declaration differs (only a whole new table does that)."""
        for mine, theirs in ((self.chains, old.chains), (self.sets, old.sets)):
            if any(mine[n] != theirs[n] for n in mine.keys() & theirs.keys()):
                return None
        removed: list[Json] = []
        added: list[Json] = []
        for name in sorted(self.sets.keys() & old.sets.keys()):
            if self.elems[name] == old.elems[name]:
                continue
            is_map = "map" in self.sets[name]
            new_elems = _by_key(self.elems[name], is_map)
            old_elems = _by_key(old.elems[name], is_map)
            gone = [e for k, e in old_elems.items() if new_elems.get(k) != e]
            came = [e for k, e in new_elems.items() if old_elems.get(k) != e]
            if gone:  # a map's element goes by its key
                removed.append(self._element(name, [e[0] for e in gone] if is_map else gone))
            if came:
                added.append(self._element(name, came))
        both = self.chains.keys() & old.chains.keys()
        refill = sorted(c for c in both if self.rules[c] != old.rules[c])
        gone_chains = [c for c in old.chains if c not in self.chains]
        new_chains = [c for c in self.chains if c not in old.chains]
        return [
            *({"delete": e} for e in removed),  # nothing jumps to a chain that goes, then
            *({"flush": _ref(old.chains[c])} for c in [*refill, *gone_chains]),
            *({"delete": _ref(old.sets[n])} for n in old.sets if n not in self.sets),
            *({"delete": _ref(old.chains[c])} for c in gone_chains),
            *({"add": self.chains[c]} for c in new_chains),
            *({"add": self._set_with(n, self.elems[n])} for n in self.sets if n not in old.sets),
            *({"add": self._rule(c, r)} for c in [*refill, *new_chains] for r in self.rules[c]),
            *({"add": e} for e in added),
        ]


def _by_key(elems: list[Any], is_map: bool) -> dict[str, Any]:
    """A set's or map's elements by their key (a map's element is [key, data]), as its repr:
    the same key is always built the same way, in the same order (and repr is faster)."""
    return {repr(e[0] if is_map else e): e for e in elems}


def _ref(obj: Json) -> Json:
    """A chain or set as a command names it: family, table, name."""
    ((kind, decl),) = obj.items()
    return {kind: {k: decl[k] for k in ("family", "table", "name")}}


def _hex128(addr: str) -> str:
    return f"0x{int(ipaddress.IPv6Address(addr)):032x}"


@functools.lru_cache(maxsize=_CACHED)
def _port_rules(p: Port) -> tuple[list[Json], ...]:
    """The rules of port p's anti-spoofing chain (`port-NAME`), built once per port (cached:
    `changes` builds the tables of both states, for every port, on every change)."""
    rules: list[list[Json]] = []

    def rule(*expr: Json) -> None:
        rules.append(list(expr))

    ether_type = _payload("ether", "type")
    v6 = sorted({p.ip6, p.link_local6}, key=ipaddress.IPv6Address)
    rule(_match(_payload("ether", "saddr"), p.mac, "!="), DROP)
    rule(_match(ether_type, _set(["ip", "arp", "ip6"]), "!="), DROP)
    rule(_match(ether_type, "ip"), _match(_payload("ip", "saddr"), p.ip4, "!="), DROP)
    rule(
        _match(ether_type, "arp"),
        _match(_payload("arp", "saddr ether"), p.mac, "!="),
        DROP,
    )
    rule(_match(ether_type, "arp"), _match(_payload("arp", "saddr ip"), p.ip4, "!="), DROP)
    rule(
        _match(ether_type, "ip6"),
        _match(_payload("ip6", "saddr"), _set(["::", *v6]), "!="),
        DROP,
    )
    icmp6_type = _payload("icmpv6", "type")
    # Duplicate address detection is the one thing sent from "::".
    rule(
        _match(_payload("ip6", "saddr"), "::"),
        _match(icmp6_type, "nd-neighbor-solicit", "!="),
        DROP,
    )
    # A guest does not route: no router advertisements or redirects to the others.
    rule(_match(icmp6_type, _set(["nd-router-advert", "nd-redirect"])), DROP)
    # A neighbour advertisement may only claim the port's own addresses (nft 1.0.6 has no
    # `icmpv6 taddr`: the target is the 128 bits at offset 64 of the ICMPv6 header).
    for addr in v6:
        rule(
            _match(icmp6_type, "nd-neighbor-advert"),
            _match({"payload": {"base": "th", "offset": 64, "len": 128}}, _hex128(addr)),
            ACCEPT,
        )
    rule(_match(icmp6_type, "nd-neighbor-advert"), DROP)
    rule(ACCEPT)  # passed: not the "unknown port" drop after the vmap
    return tuple(rules)


def _bridge_table(desired: Desired) -> _Table:
    t = _Table("bridge")
    ports = sorted(desired.ports, key=lambda p: p.name)
    t.map("ports", "ifname", "verdict", [[p.name, _jump(f"port-{p.name}")] for p in ports])
    t.map("ingress", "ifname", "verdict", [[p.name, _jump(f"in-{p.name}")] for p in ports])
    for p in ports:
        t.chain(f"port-{p.name}")
        t.rules[f"port-{p.name}"] = list(_port_rules(p))
        # Security groups go here; until then the network's own machines talk to each other.
        t.chain(f"in-{p.name}")
    pre = t.chain("prerouting", "prerouting", prio=-200)
    t.rule(pre, {"vmap": {"key": _meta("iifname"), "data": "@ports"}})
    for prefix in PORT_PREFIXES:  # a port of ours without a chain: not wired yet, or stale
        t.rule(pre, _match(_meta("iifname"), prefix + "*"), DROP)
    fwd = t.chain("forward", "forward", prio=0)
    t.rule(fwd, {"vmap": {"key": _meta("oifname"), "data": "@ingress"}})
    return t


def _inet_table(desired: Desired) -> _Table:
    t = _Table("inet")
    bridges = sorted(desired.bridges, key=lambda b: b.name)
    hn = BRIDGE_PREFIX + "*"
    iif, oif = _meta("iifname"), _meta("oifname")
    ct_state = {"ct": {"key": "state"}}
    established = _match(ct_state, ["established", "related"], "in")
    l4 = _meta("l4proto")
    dport = _payload("th", "dport")

    # Published ports. Any address: (proto . port); one address: (addr . proto . port). Two
    # maps each, address and port (nft 1.0.6's JSON parser takes no concatenated map data).
    anywhere = sorted(
        (p for p in desired.published if not p.host_ip), key=lambda p: (p.protocol, p.host_port)
    )
    at = sorted(
        (p for p in desired.published if p.host_ip),
        key=lambda p: (p.host_ip, p.protocol, p.host_port),
    )
    key_any, key_at = ["inet_proto", "inet_service"], ["ipv4_addr", "inet_proto", "inet_service"]
    t.map("published", key_any, "ipv4_addr",
          [[_concat(p.protocol, p.host_port), p.ip4] for p in anywhere])  # fmt: skip
    t.map("published_port", key_any, "inet_service",
          [[_concat(p.protocol, p.host_port), p.port] for p in anywhere])  # fmt: skip
    t.map("published_at", key_at, "ipv4_addr",
          [[_concat(p.host_ip, p.protocol, p.host_port), p.ip4] for p in at])  # fmt: skip
    t.map("published_at_port", key_at, "inet_service",
          [[_concat(p.host_ip, p.protocol, p.host_port), p.port] for p in at])  # fmt: skip
    egress: list[Any] = []
    for b in bridges:
        if b.egress == "nat":
            verdict = ACCEPT
        elif b.egress == "allow-list":
            verdict = _jump(f"egress-{b.name}")
        else:
            verdict = DROP
        egress.append([b.name, verdict])
    t.map("egress", "ifname", "verdict", egress)
    for b in bridges:
        if b.egress != "allow-list":
            continue
        chain = t.chain(f"egress-{b.name}")
        for version, proto in ((4, "ip"), (6, "ip6")):
            cidrs = [c for c in b.egress_allow if ipaddress.ip_network(c).version == version]
            if cidrs:
                t.rule(
                    chain, _match(_payload(proto, "daddr"), _set(_prefix(c) for c in cidrs)), ACCEPT
                )
        t.rule(chain, DROP)

    # raw: addresses no packet from a sandbox may carry, before NAT looks at them
    raw = t.chain("raw", "prerouting", prio=-300)
    t.rule(raw, _match(iif, hn), _match(_payload("ip", "daddr"), _prefix("127.0.0.0/8")), DROP)
    t.rule(raw, _match(iif, hn), _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")), DROP)
    t.rule(raw, _match(iif, hn), _match(_payload("ip6", "daddr"), "::1"), DROP)

    # input: the node itself. From a sandbox only DNS to its own gateway, NDP, and replies.
    inp = t.chain("input", "input", prio=0)
    guest_in = t.chain("from-sandbox-input")
    t.rule(inp, _match(iif, hn), _jump(guest_in))
    t.rule(guest_in, established, ACCEPT)
    # (bridge . gateway) pairs, a named set per family: a network that comes or goes changes
    # elements, not the rule.
    for proto, addr_type, version in (("ip", "ipv4_addr", 4), ("ip6", "ipv6_addr", 6)):
        pairs = [
            _concat(b.name, addr)
            for b in bridges
            for addr in (b.gateway4, b.gateway6)
            if ipaddress.ip_address(addr).version == version
        ]
        name = t.set(f"gateways{version}", ["ifname", addr_type], pairs)
        t.rule(
            guest_in,
            _match(_concat(iif, _payload(proto, "daddr")), f"@{name}"),
            _match(l4, _set(["tcp", "udp"])),
            _match(dport, 53),
            ACCEPT,
        )
    t.rule(
        guest_in,
        _match(_payload("icmpv6", "type"), _set(["nd-neighbor-solicit", "nd-neighbor-advert"])),
        ACCEPT,
    )
    t.rule(guest_in, DROP)
    _underlay_input(t, inp, desired.overlay)

    # forward: between sandboxes' networks and the world
    fwd = t.chain("forward", "forward", prio=0)
    # Security groups first: to a sandbox in groups (by bridge and address, which anti-spoofing
    # makes its own), only what a rule allows goes on to the checks below; the rest is dropped.
    guarded = sorted((p for p in desired.ports if p.ingress is not None), key=lambda p: p.name)
    _group_maps(t, fwd, "ingress", "in", guarded, iface=oif, field="daddr")
    # Then egress: from a sandbox whose groups have egress rules (by bridge and source address,
    # its own for the same reason), only what a rule allows goes on. A packet between two
    # sandboxes of one network meets both: the sender's egress and the receiver's ingress.
    limited = sorted((p for p in desired.ports if p.egress is not None), key=lambda p: p.name)
    _group_maps(t, fwd, "egress", "out", limited, iface=iif, field="saddr")
    # The node's own connections (to a published port on 127.0.0.1 or on its address) are not
    # forwarded: the same check where they leave, after the output DNAT. By address alone: the
    # output hook keeps the interface of the route before DNAT (lo for 127.0.0.1), so a key with
    # the bridge would never match (a node hosts no two networks with one subnet: the
    # controller gives each subnet once).
    out = t.chain("output", "output", prio=0)
    # The node agent's waker (agent/idle.py) hands on only connections the groups admit (it
    # checks each client's address, `Allow.admits`), then connects from the node: not again.
    t.rule(out, _match(_meta("mark"), WAKER_MARK), ACCEPT)
    for proto, addr_type, version in (("ip", "ipv4_addr", 4), ("ip6", "ipv6_addr", 6)):
        elems = [[p.ip4 if version == 4 else p.ip6, _jump(f"in-{p.name}")] for p in guarded]
        name = t.map(f"ingress_local{version}", addr_type, "verdict", elems)
        t.rule(out, {"vmap": {"key": _payload(proto, "daddr"), "data": f"@{name}"}})
    for p in guarded:
        assert p.ingress is not None
        _group_chain(t, f"in-{p.name}", p.ingress, "saddr")
    for p in limited:
        assert p.egress is not None
        _group_chain(t, f"out-{p.name}", p.egress, "daddr")
    from_guest = t.chain("from-sandbox")
    to_guest = t.chain("to-sandbox")
    # With br_netfilter (bridge-nf-call-iptables=1 in the namespace, which overrides the
    # bridge's own nf_call_iptables=0), frames bridged between two ports of one network pass
    # here too, as bridge -> same bridge: the network's own traffic, let through.
    t.set("same_bridge", ["ifname", "ifname"], [_concat(b.name, b.name) for b in bridges])
    t.rule(fwd, _match(_concat(iif, oif), "@same_bridge"), ACCEPT)
    t.rule(fwd, _match(iif, hn), _jump(from_guest))
    t.rule(fwd, _match(oif, hn), _jump(to_guest))
    t.rule(from_guest, established, ACCEPT)
    t.rule(from_guest, _match(oif, hn), DROP)  # networks never route to each other
    # The infrastructure (the cluster's nodes and controllers, the operator's list) and the
    # ranges no sandbox may reach: one named set per family (a change: its elements).
    for version, proto in ((4, "ip"), (6, "ip6")):
        name = t.set(f"blocked{version}", f"ipv{version}_addr", _blocked(desired, version),
                     ("interval",))  # fmt: skip
        t.rule(from_guest, _match(_payload(proto, "daddr"), f"@{name}"), DROP)
    # The overlay's port, whatever the address: through this node's NAT a sandbox's VXLAN packet
    # would reach another node from a peer's address, and that node would take the frame inside
    # into any network it hosts (VXLAN checks nothing but the VNI).
    t.rule(from_guest, _match(l4, "udp"), _match(dport, VXLAN_PORT), DROP)
    t.rule(from_guest, {"vmap": {"key": iif, "data": "@egress"}})
    t.rule(from_guest, DROP)  # a bridge the map does not know
    t.rule(to_guest, established, ACCEPT)
    t.rule(to_guest, _match({"ct": {"key": "status"}}, "dnat", "in"), ACCEPT)
    t.rule(to_guest, DROP)

    _usage(t, desired.ports)

    # nat: published ports, from other hosts (prerouting) and from the node itself (output)
    fib_local = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
    for name, hook in (("dnat", "prerouting"), ("dnat-local", "output")):
        chain = t.chain(name, hook, kind="nat", prio=-100)
        if hook == "prerouting":  # a sandbox aiming at a node port gets the node: dropped
            t.rule(chain, _match(iif, hn), RETURN)
        for key, data, guard in (
            # fib local on both: a HOST_IP that is not the node's own (the controller's, a
            # registry's) must not take the node's or anyone's connections to it.
            (_concat(_payload("ip", "daddr"), l4, dport), "published_at", [fib_local]),
            (_concat(l4, dport), "published", [fib_local]),
        ):
            t.rule(
                chain,
                *guard,
                _match(key, f"@{data}"),
                {
                    "dnat": {
                        "family": "ip",
                        "addr": {"map": {"key": key, "data": f"@{data}"}},
                        "port": {"map": {"key": key, "data": f"@{data}_port"}},
                    }
                },
            )
    post = t.chain("snat", "postrouting", kind="nat", prio=100)
    # The node's own 127.0.0.1 talking to a sandbox: the sandbox answers its gateway instead.
    t.rule(post, _match(oif, hn), _match(_payload("ip", "saddr"), _prefix("127.0.0.0/8")),
           {"masquerade": None})  # fmt: skip
    t.rule(post, _match(iif, hn), _match(oif, hn, "!="), {"masquerade": None})
    return t


def _usage(t: _Table, ports: tuple[Port, ...]) -> None:
    """What each sandbox sends out of its network and gets from outside it (what the node
    routes for it: not its network's own frames, bridged), in a named counter per port and
    direction (`pub-out-PORT`, `pub-in-PORT`), looked up by its address (anti-spoofing makes
    that its own). In a forward chain after hutch's filter: only what that let through."""
    hn = BRIDGE_PREFIX + "*"
    iif, oif = _meta("iifname"), _meta("oifname")
    for p in sorted(ports, key=lambda p: p.name):
        t.counter(f"pub-out-{p.name}")
        t.counter(f"pub-in-{p.name}")
    usage = t.chain("usage", "forward", prio=10)
    for version, proto in ((4, "ip"), (6, "ip6")):
        addrs = sorted((a, p.name) for p in ports if (a := p.ip4 if version == 4 else p.ip6))
        for way, side, (mine, other) in (("out", "saddr", (iif, oif)), ("in", "daddr", (oif, iif))):
            elems = [[addr, f"pub-{way}-{port}"] for addr, port in addrs]
            counted = t.map(f"public_{way}{version}", f"ipv{version}_addr", "counter", elems)
            key = _payload(proto, side)
            t.rule(usage, _match(mine, hn), _match(other, hn, "!="),
                   {"counter": {"map": {"key": key, "data": f"@{counted}"}}})  # fmt: skip


def counters(nft: str = "nft") -> dict[str, tuple[int, int]]:
    """hutch's named counters now: name -> (packets, bytes); empty without its tables."""
    proc = subprocess.run(
        [nft, "-j", "list", "counters", "table", "inet", TABLE], capture_output=True, check=False
    )
    if proc.returncode != 0:
        return {}
    return {
        c["name"]: (int(c["packets"]), int(c["bytes"]))
        for item in json.loads(proc.stdout)["nftables"]
        if (c := item.get("counter")) is not None
    }


def _group_maps(
    t: _Table, chain: str, kind: str, prefix: str, ports: list[Port], *, iface: Json, field: str
) -> None:
    """Verdict maps `kind`4 and `kind`6 from (bridge, address) to each port's `prefix`-NAME
    chain of group rules, and the rule in `chain` that looks the packet up in them by
    `iface` and its `field` address (daddr for ingress, saddr for egress)."""
    for proto, addr_type, version in (("ip", "ipv4_addr", 4), ("ip6", "ipv6_addr", 6)):
        elems = [
            [_concat(p.bridge, p.ip4 if version == 4 else p.ip6), _jump(f"{prefix}-{p.name}")]
            for p in ports
        ]
        name = t.map(f"{kind}{version}", ["ifname", addr_type], "verdict", elems)
        t.rule(chain, {"vmap": {"key": _concat(iface, _payload(proto, field)), "data": f"@{name}"}})


def _group_chain(t: _Table, chain: str, allows: tuple[Allow, ...], remote: str) -> None:
    """`in-PORT` (remote: "saddr") or `out-PORT` (remote: "daddr"): what may reach, or leave,
    a sandbox in security groups. Replies, neighbour discovery and what one of the rules allows
    return to the forward chain (where the network's own checks still apply: a rule never
    widens them); anything else is dropped. Ingress holds for its network's machines and for
    published ports alike (remote: the client's address, 127.0.0.1 for the node's own
    connections); egress for its network's machines and the world alike."""
    t.chain(chain)
    t.rules[chain] = list(_group_rules(allows, remote))


@functools.lru_cache(maxsize=_CACHED)
def _group_rules(allows: tuple[Allow, ...], remote: str) -> tuple[list[Json], ...]:
    """The rules of a `_group_chain` (cached, as `_port_rules`: ports in the same groups share
    them)."""
    rules: list[list[Json]] = [
        [_match({"ct": {"key": "state"}}, ["established", "related"], "in"), RETURN],
        [_match(_payload("icmpv6", "type"), _set(["nd-neighbor-solicit", "nd-neighbor-advert"])),
         RETURN],
    ]  # fmt: skip
    for rule in allows:
        for family, version, icmp in (("ip", 4, "icmp"), ("ip6", 6, "ipv6-icmp")):
            cidrs = [c for c in rule.remotes if ipaddress.ip_network(c).version == version]
            if not cidrs:
                continue
            match = [_match(_payload(family, remote), _set(_prefix(c) for c in cidrs))]
            if rule.protocol == "icmp":
                match.append(_match(_meta("l4proto"), icmp))
            elif rule.protocol != "any":
                match.append(_match(_meta("l4proto"), rule.protocol))
                if rule.port_min or rule.port_max:
                    lo, hi = rule.port_min, rule.port_max or rule.port_min
                    ports: Any = lo if lo == hi else {"range": [lo, hi]}
                    match.append(_match(_payload("th", "dport"), ports))
            rules.append([*match, RETURN])
    rules.append([DROP])
    return tuple(rules)


def _blocked(desired: Desired, version: int) -> list[Json]:
    """The blocked CIDRs of one family, always-blocked ranges included, merged: an interval
    set takes no overlapping elements (a node's /32 inside an operator's /16)."""
    always = ALWAYS_BLOCKED4 if version == 4 else ALWAYS_BLOCKED6
    nets = [ipaddress.ip_network(c, strict=False) for c in (*always, *desired.blocked)]
    merged = ipaddress.collapse_addresses(n for n in nets if n.version == version)  # type: ignore[type-var]
    return [_prefix(str(n)) for n in merged]


def _underlay_input(t: _Table, inp: str, overlay: Overlay | None) -> None:
    """VXLAN (UDP 4789) for a hosted network's VNI gets in only from its peer nodes' underlay
    addresses: anyone else on the underlay could put frames on the tenant's network. VNIs hutch
    does not host are left alone (no device of ours takes them; someone else's VXLAN may)."""
    if overlay is None or not overlay.vnis:
        return
    chain = t.chain("from-underlay")
    vni = {"payload": {"base": "th", "offset": 96, "len": 24}}  # after UDP's 8 and 4 bytes
    t.rule(
        inp,
        _match(_meta("l4proto"), "udp"),
        _match(_payload("th", "dport"), VXLAN_PORT),
        _match(vni, _set(sorted(overlay.vnis))),
        _jump(chain),
    )
    peers4 = sorted({a for a in overlay.peers if ipaddress.ip_address(a).version == 4})
    peers6 = sorted({a for a in overlay.peers if ipaddress.ip_address(a).version == 6})
    t.set("underlay_peers4", "ipv4_addr", peers4)
    t.set("underlay_peers6", "ipv6_addr", peers6)
    t.rule(chain, _match(_payload("ip", "saddr"), "@underlay_peers4"), ACCEPT)
    t.rule(chain, _match(_payload("ip6", "saddr"), "@underlay_peers6"), ACCEPT)
    t.rule(chain, DROP)


def ruleset(desired: Desired) -> Json:
    """The nft JSON batch that makes hutch's two tables exactly `desired`."""
    return {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            *_bridge_table(desired).commands(),
            *_inet_table(desired).commands(),
        ]
    }


def changes(old: Desired, new: Desired) -> Json | None:
    """The nft batch that turns the tables `ruleset(old)` made into those `ruleset(new)` makes,
    changing only what differs: set and map elements, and the chains of the ports (and
    networks) that changed, flushed and refilled, added or deleted. One transaction, as
    `ruleset`'s; afterwards nft lists the tables as it would after `ruleset(new)` (but for the
    order of elements and chains, which nft's lookups do not depend on). None: nothing differs.
    A declaration that differs (no state of hutch's makes one): the whole `ruleset(new)`."""
    cmds: list[Json] = []
    for build in (_bridge_table, _inet_table):
        table = build(new)
        part = table.changes(build(old))
        if part is None:
            return ruleset(new)
        cmds += part
    if not cmds:
        return None
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def removal() -> Json:
    """The batch that removes hutch's tables (and nothing else)."""
    cmds: list[Json] = []
    for family in ("bridge", "inet"):
        table = {"table": {"family": family, "name": TABLE}}
        cmds += [{"add": table}, {"delete": table}]
    return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def apply(batch: Json, nft: str = "nft") -> None:
    """Run one nft transaction: all of `batch` happens, or none of it."""
    try:
        proc = subprocess.run(
            [nft, "-j", "-f", "-"],
            input=json.dumps(batch).encode(),
            capture_output=True,
            check=False,
        )
    except FileNotFoundError:
        raise Unavailable(f"{nft} is not installed (apt-get install nftables)") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise Unavailable(f"nft refused hutch's ruleset: {' / '.join(detail)}")


def listed(nft: str = "nft") -> Json:
    """hutch's tables as nft lists them (JSON); empty when there are none."""
    out: list[Json] = []
    for family in ("bridge", "inet"):
        proc = subprocess.run(
            [nft, "-j", "list", "table", family, TABLE], capture_output=True, check=False
        )
        if proc.returncode == 0:
            out += json.loads(proc.stdout)["nftables"]
    return {"nftables": out}
