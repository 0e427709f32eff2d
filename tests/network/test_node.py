"""The node's data path with network namespaces standing in for sandboxes (what the container
runtime gets from `plug_netns`, without crun): every denial next to the same probe allowed."""

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hutch.model.network import PortMapping
from hutch.model.sandbox import ProcessSpec, SandboxSpec
from hutch.network import activity, links, nft
from hutch.network.dns import DnsServer, machine_records
from hutch.network.nft import Allow, Groups
from hutch.network.node import NetworkOptions, NodeNetwork
from tests.network.tables import canonical
from tests.network.topology import (
    BUSYBOX,
    METADATA_IP,
    NODE_IP,
    OUTSIDE_IP,
    Topology,
    attachment,
    topology,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def topo() -> Iterator[Topology]:
    yield from topology()


@pytest.fixture
def node(topo: Topology, tmp_path: Path) -> Iterator[NodeNetwork]:
    net = NodeNetwork(NetworkOptions(state_dir=tmp_path, netns=topo.node_path))
    yield net
    net.reconcile([])


def spec(sandbox_id: str, vni: int, host: int, *ports: str, **kw: object) -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id,
        process=ProcessSpec(args=("true",)),
        networks=(attachment(vni, host, **kw),),
        ports=tuple(PortMapping.parse(p) for p in ports),
    )


def ours(topo: Topology) -> list[str]:
    out = topo.run(topo.node, "ip", "-o", "link", "show").stdout
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines()
                  if ": h" in line)  # fmt: skip


def test_same_network_talks_other_networks_and_the_host_do_not(
    topo: Topology, node: NodeNetwork
) -> None:
    a = node.plug_netns(spec("a", 7, 2))
    b = node.plug_netns(spec("b", 7, 3))
    c = node.plug_netns(spec("c", 8, 2))
    assert topo.ping(b, "10.77.7.2")
    assert topo.ping(b, "fd77:0:0:7::2")
    topo.serve_http(a, "0.0.0.0", 8000, "a\n")
    assert topo.get(b, "10.77.7.2", 8000) == "a\n"
    # another network's machine, on the same node: nothing by ICMP or TCP, either way
    assert not topo.ping(c, "10.77.7.2")
    assert topo.get(c, "10.77.7.2", 8000) is None
    assert not topo.ping(a, "10.77.8.2")
    # the node: its own servers answer it, never a sandbox (gateway, uplink, loopback)
    topo.serve_http(topo.node, "0.0.0.0", 9000, "node\n")
    topo.serve_http(topo.node, "127.0.0.1", 9001, "node-local\n")
    assert topo.get(topo.node, "10.77.7.1", 9000) == "node\n"
    assert topo.get(topo.node, "127.0.0.1", 9001) == "node-local\n"
    for addr in ("10.77.7.1", NODE_IP, "fd77:0:0:7::1"):
        assert topo.get(a, addr, 9000) is None
    assert not topo.ping(a, "10.77.7.1")
    # a sandbox that routes 127/8 to its gateway still gets nothing
    assert topo.ok(a, "ip", "route", "add", "127.1.0.0/16", "via", "10.77.7.1")
    assert topo.get(a, "127.1.0.1", 9001) is None


def test_egress_by_nat_but_not_to_169_254(topo: Topology, node: NodeNetwork) -> None:
    a = node.plug_netns(spec("a", 7, 2))
    d = node.plug_netns(spec("d", 9, 2, egress="deny"))
    topo.serve_http(topo.outside, "0.0.0.0", 80, "outside\n")
    assert topo.get(a, OUTSIDE_IP, 80) == "outside\n"
    assert topo.get(topo.node, METADATA_IP, 80) == "outside\n"  # the node reaches it...
    assert topo.get(a, METADATA_IP, 80) is None  # ...a sandbox does not
    assert topo.get(d, OUTSIDE_IP, 80) is None  # egress denied on its network


def test_traffic_tells_what_left_the_network_from_its_own(
    topo: Topology, node: NodeNetwork
) -> None:
    """A sandbox's NIC counters, and of them what the node routed in from outside its network
    or out of it (metered as ingress and egress): not what its neighbour sent it, nor what
    its network's egress policy dropped."""
    a = node.plug_netns(spec("a", 7, 2))
    b = node.plug_netns(spec("b", 7, 3))
    d = node.plug_netns(spec("d", 9, 2, egress="deny"))
    big = "x" * 300_000 + "\n"
    topo.serve_http(topo.outside, "0.0.0.0", 80, big)
    topo.serve_http(b, "0.0.0.0", 8000, big)
    assert topo.get(a, OUTSIDE_IP, 80) == big  # in from outside
    assert topo.get(a, "10.77.7.3", 8000) == big  # from its neighbour
    assert topo.get(d, OUTSIDE_IP, 80) is None  # denied: it never left
    seen = node.traffic()
    assert 300_000 < seen["a"].public.rx_bytes < 400_000
    assert seen["a"].total.rx_bytes > 600_000
    assert 0 < seen["a"].public.tx_packets < seen["a"].total.tx_packets
    assert seen["b"].public == (0, 0, 0, 0) and seen["b"].total.tx_bytes > 300_000
    assert seen["d"].public == (0, 0, 0, 0) and seen["d"].total.tx_packets > 0


def test_egress_allow_list(topo: Topology, node: NodeNetwork) -> None:
    topo.serve_http(topo.outside, "0.0.0.0", 80, "outside\n")
    ok = node.plug_netns(spec("a", 7, 2, egress="allow-list", egress_allow=("192.0.2.2/32",)))
    no = node.plug_netns(spec("b", 8, 2, egress="allow-list", egress_allow=("198.51.100.0/24",)))
    assert topo.get(ok, OUTSIDE_IP, 80) == "outside\n"
    assert topo.get(no, OUTSIDE_IP, 80) is None


def test_published_ports_answer_outside_and_on_the_nodes_loopback(
    topo: Topology, node: NodeNetwork
) -> None:
    a = node.plug_netns(spec("a", 7, 2, "8080:80", "127.0.0.1:8081:81"))
    topo.serve_http(a, "0.0.0.0", 80, "published\n")
    topo.serve_http(a, "0.0.0.0", 81, "local only\n")
    assert topo.get(topo.outside, NODE_IP, 8080) == "published\n"
    assert topo.get(topo.node, "127.0.0.1", 8080) == "published\n"
    assert topo.get(topo.node, NODE_IP, 8080) == "published\n"
    assert topo.get(topo.node, "127.0.0.1", 8081) == "local only\n"
    assert topo.get(topo.outside, NODE_IP, 8081) is None  # published on 127.0.0.1 only
    assert topo.get(topo.outside, "10.77.7.2", 80) is None  # unpublished: no route in
    topo.run(topo.outside, "ip", "route", "add", "10.77.0.0/16", "via", NODE_IP)
    assert topo.get(topo.outside, "10.77.7.2", 80) is None  # ...nor with one
    node.unplug("a")
    assert topo.get(topo.outside, NODE_IP, 8080) is None


def test_security_groups_guard_published_ports_from_the_node_itself_too(
    topo: Topology, node: NodeNetwork
) -> None:
    """A sandbox in groups gets only what their rules allow, through its published port too,
    from outside and from the node's own 127.0.0.1 and address (connections that are not
    forwarded: the check where they leave once looked them up by the route before the DNAT,
    lo, and let them all in); a rule removed closes the port to all, one added opens it."""
    a = node.plug_netns(spec("a", 7, 2, "8080:80"))
    b = node.plug_netns(spec("b", 7, 3))
    topo.serve_http(a, "0.0.0.0", 80, "guarded\n")
    web = {"a": nft.Groups(ingress=(nft.Allow("tcp", 80, 80, ("0.0.0.0/0",)),))}
    node.set_groups(web)
    assert topo.get(topo.node, "127.0.0.1", 8080) == "guarded\n"
    assert topo.get(topo.node, NODE_IP, 8080) == "guarded\n"
    assert topo.get(topo.outside, NODE_IP, 8080) == "guarded\n"
    assert topo.get(b, "10.77.7.2", 80) == "guarded\n"
    node.set_groups({"a": nft.Groups()})  # in a group with no rule: nothing new gets in
    assert topo.get(topo.node, "127.0.0.1", 8080) is None
    assert topo.get(topo.node, NODE_IP, 8080) is None
    assert topo.get(topo.outside, NODE_IP, 8080) is None
    assert topo.get(b, "10.77.7.2", 80) is None
    node.set_groups(web)
    assert topo.get(topo.node, "127.0.0.1", 8080) == "guarded\n"
    assert topo.get(b, "10.77.7.2", 80) == "guarded\n"


def test_a_sandbox_that_changes_its_ip_or_mac_gets_nothing_through(
    topo: Topology, node: NodeNetwork
) -> None:
    a = node.plug_netns(spec("a", 7, 2))
    b = node.plug_netns(spec("b", 7, 3))
    topo.serve_http(topo.outside, "0.0.0.0", 80, "outside\n")
    assert topo.ping(a, "10.77.7.3")
    assert topo.get(a, OUTSIDE_IP, 80) == "outside\n"
    # another address of its network (a free one, then its neighbour's)
    for stolen in ("10.77.7.50", "10.77.7.3"):
        assert topo.ok(a, "ip", "addr", "flush", "dev", "eth0", "scope", "global")
        assert topo.ok(a, "ip", "addr", "add", f"{stolen}/24", "dev", "eth0")
        assert topo.ok(a, "ip", "route", "replace", "default", "via", "10.77.7.1")
        assert not topo.ping(a, "10.77.7.3" if stolen != "10.77.7.3" else "10.77.7.1")
        assert topo.get(a, OUTSIDE_IP, 80) is None
    # back to its own address: through again; then another MAC: nothing
    assert topo.ok(a, "ip", "addr", "flush", "dev", "eth0", "scope", "global")
    assert topo.ok(a, "ip", "addr", "add", "10.77.7.2/24", "dev", "eth0")
    assert topo.ok(a, "ip", "route", "replace", "default", "via", "10.77.7.1")
    assert topo.ok(a, "ip", "neigh", "flush", "all")
    assert topo.ping(a, "10.77.7.3")
    assert topo.ok(a, "ip", "link", "set", "eth0", "address", "02:00:00:00:07:99")
    assert topo.ok(a, "ip", "neigh", "flush", "all")
    assert topo.ok(b, "ip", "neigh", "flush", "all")
    assert not topo.ping(a, "10.77.7.3")
    assert topo.get(a, OUTSIDE_IP, 80) is None


def test_cycles_and_reconcile_leave_nothing_behind(topo: Topology, node: NodeNetwork) -> None:
    before = ours(topo)
    for i in range(50):
        node.plug_netns(spec(f"s{i}", 7, 2, "8080:80"))
        node.unplug(f"s{i}")
    assert ours(topo) == before
    assert "10.77.7.2" not in topo.run(topo.node, "nft", "list", "ruleset").stdout
    # an agent that restarts: what exists and is still wanted stays, the rest goes
    keep, drop = spec("keep", 7, 2, "8080:80"), spec("drop", 8, 2)
    node.plug_netns(keep)
    node.plug_netns(drop)
    topo.run(topo.node, "nft", "add", "table", "inet", "someone-elses")
    topo.run(topo.node, "ip", "link", "add", "hn-not-ours", "type", "bridge")
    node.close()  # the agent gone: its published ports' sockets with it
    fresh = NodeNetwork(node.opts)
    fresh.reconcile([keep])
    names = ours(topo)
    assert links.port_name(links.VETH_PREFIX, "keep") in names
    assert links.port_name(links.VETH_PREFIX, "drop") not in names
    assert "hn-8" not in names and "hn-7" in names
    assert "hn-not-ours" in names  # not made by hutch (no alias): not touched
    rules = topo.run(topo.node, "nft", "list", "ruleset").stdout
    assert "table inet someone-elses" in rules
    assert rules.count("table inet hutch") == 1
    assert "10.77.8.2" not in rules and "10.77.7.2" in rules
    fresh.reconcile([])
    assert ours(topo) == ["hn-not-ours"]
    assert "hutch" not in topo.run(topo.node, "nft", "list", "ruleset").stdout.replace(
        "someone-elses", ""
    )


UDP_ECHO = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))\n"
    "while True:\n    data, peer = s.recvfrom(100); s.sendto(b'udp-answer ' + data, peer)"
)
UDP_ASK = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
    "s.sendto(b'hi', (sys.argv[1], int(sys.argv[2])))\n"
    "try:\n    print(s.recv(100).decode())\nexcept OSError:\n    print('nothing')"
)


def test_a_published_udp_port(topo: Topology, node: NodeNetwork) -> None:
    # busybox's nc has no UDP: Python on both ends (the host's interpreter, in the namespaces)
    a = node.plug_netns(spec("a", 7, 2, "5353:53/udp"))
    echo = subprocess.Popen(["nsenter", f"--net={a}", sys.executable, "-c", UDP_ECHO])
    try:
        time.sleep(0.5)
        ask = topo.run(topo.outside, sys.executable, "-c", UDP_ASK, NODE_IP, "5353")
        assert ask.stdout.strip() == "udp-answer hi"
        ask = topo.run(topo.outside, sys.executable, "-c", UDP_ASK, NODE_IP, "5354")
        assert ask.stdout.strip() == "nothing"
        ask = topo.run(topo.node, sys.executable, "-c", UDP_ASK, "127.0.0.1", "5353")
        assert ask.stdout.strip() == "udp-answer hi"
    finally:
        echo.kill()
        echo.wait()


SEND_UDP = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[2])):\n    s.sendto(b'x' * 100, (sys.argv[1], 9))"
)


def rx_packets(topo: Topology, netns: Path) -> int:
    stats = json.loads(topo.run(netns, "ip", "-j", "-s", "link", "show", "eth0").stdout)
    return int(stats[0]["stats64"]["rx"]["packets"])


def test_frames_for_a_sandbox_go_to_its_port_only(topo: Topology, node: NodeNetwork) -> None:
    # The bridge learns nothing from the wire (a sandbox could claim others' MACs): hutch tells
    # it where each sandbox's MAC is, or every frame would go to every port of the network, a
    # cost per packet that grows with the number of machines (and others' traffic to see).
    a = node.plug_netns(spec("a", 7, 2))
    b = node.plug_netns(spec("b", 7, 3))
    c = node.plug_netns(spec("c", 7, 4))
    assert topo.ping(a, "10.77.7.3")
    b_before, c_before = rx_packets(topo, b), rx_packets(topo, c)
    assert topo.ok(a, sys.executable, "-c", SEND_UDP, "10.77.7.3", "300")
    assert rx_packets(topo, b) - b_before >= 300  # the addressee gets them...
    assert rx_packets(topo, c) - c_before < 30  # ...and its neighbour does not


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    """A DNS server on an event loop of its own thread (the agent's loop, in the agent)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = DnsServer()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result()
    yield server
    asyncio.run_coroutine_threadsafe(server.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


TCP_ASK = (
    "import socket, struct, sys\n"
    "q = struct.pack('!6H', 9, 0x100, 1, 0, 0, 0) + b''.join(bytes([len(x)]) + x.encode() "
    "for x in sys.argv[2].split('.')) + b'\\0\\0\\1\\0\\1'\n"
    "s = socket.create_connection((sys.argv[1], 53), timeout=3)\n"
    "s.sendall(struct.pack('!H', len(q)) + q); r = s.recv(600)[2:]\n"
    "print('rcode', r[3] & 15, 'answer', '.'.join(map(str, r[-4:])) if r[7] else '-')"
)


def lookup(topo: Topology, netns: Path, name: str, server: str) -> str:
    out = topo.run(netns, BUSYBOX, "nslookup", "-timeout=2", "-retry=1", name, server)
    return out.stdout + out.stderr


def test_dns_answers_a_networks_names_on_its_gateway_only(
    topo: Topology, tmp_path: Path, dns: DnsServer
) -> None:
    node = NodeNetwork(NetworkOptions(state_dir=tmp_path, netns=topo.node_path), dns=dns)
    try:
        a = node.plug_netns(spec("a", 7, 2))
        b = node.plug_netns(spec("b", 7, 3))
        c = node.plug_netns(spec("c", 8, 2))
        dns.update("net-7", machine_records("web", "m-a", "test", "10.77.7.2", "fd77:0:0:7::2"))
        dns.update("net-8", machine_records("db", "m-c", "test", "10.77.8.2", "fd77:0:0:8::2"))
        # a peer's name and id, from its network's gateway (v4 and v6), by UDP and TCP
        for name in ("web.test.internal", "m-a.test.internal", "WEB.test.internal"):
            out = lookup(topo, b, name, "10.77.7.1")
            assert "10.77.7.2" in out and "fd77:0:0:7::2" in out, out
        assert "10.77.7.2" in lookup(topo, a, "web.test.internal", "fd77:0:0:7::1")
        tcp = topo.run(b, sys.executable, "-c", TCP_ASK, "10.77.7.1", "web.test.internal")
        assert tcp.stdout.split() == ["rcode", "0", "answer", "10.77.7.2"], tcp.stderr
        # another network's machine, same project, same node: its gateway does not know it...
        out = lookup(topo, c, "web.test.internal", "10.77.8.1")
        assert "NXDOMAIN" in out and "10.77.7.2" not in out
        assert "10.77.8.2" in lookup(topo, c, "db.test.internal", "10.77.8.1")
        # ...and the other network's gateway does not answer it at all
        out = lookup(topo, c, "web.test.internal", "10.77.7.1")
        assert "10.77.7.2" not in out and "timed out" in out, out
        tcp = topo.run(c, sys.executable, "-c", TCP_ASK, "10.77.7.1", "web.test.internal")
        assert tcp.returncode != 0 and "10.77.7.2" not in tcp.stdout
        # not an open resolver: names outside .internal are refused
        assert "REFUSED" in lookup(topo, b, "example.com", "10.77.7.1")
        # changes take effect at once
        dns.update("net-7", [])
        assert "NXDOMAIN" in lookup(topo, b, "web.test.internal", "10.77.7.1")
        # a network's last sandbox gone: its sockets go with its bridge
        listening = topo.run(topo.node, "ss", "-Hluntp").stdout
        assert "10.77.8.1%hn-8:53" in listening, listening
        node.unplug("c")
        assert "10.77.8.1" not in topo.run(topo.node, "ss", "-Hluntp").stdout
        assert "10.77.7.1%hn-7:53" in topo.run(topo.node, "ss", "-Hluntp").stdout
    finally:
        node.reconcile([])
    assert ":53" not in topo.run(topo.node, "ss", "-Hluntp").stdout


def test_egress_rules_let_out_only_what_they_allow(topo: Topology, node: NodeNetwork) -> None:
    a = node.plug_netns(spec("a", 7, 2))  # the probe, whose groups change below
    b = node.plug_netns(spec("b", 7, 3))  # in no group
    for port in (8080, 8081):
        topo.serve_http(b, "0.0.0.0", port, f"{port}\n")
    topo.serve_http(a, "0.0.0.0", 8000, "a\n")
    topo.serve_http(topo.outside, "0.0.0.0", 80, "outside\n")
    network = ("10.77.7.0/24", "fd77:0:0:7::/64")
    ingress = (Allow("tcp", 8000, 8000, network),)

    def reaches() -> tuple[bool, bool, bool, bool]:
        """a -> b:8080, a -> b:8081, a -> the world, a -> b by ICMP."""
        return (
            topo.get(a, "10.77.7.3", 8080) == "8080\n",
            topo.get(a, "10.77.7.3", 8081) == "8081\n",
            topo.get(a, OUTSIDE_IP, 80) == "outside\n",
            topo.ping(a, "10.77.7.3"),
        )

    assert reaches() == (True, True, True, True)  # in no group
    node.set_groups({"a": Groups(ingress)})  # groups without egress rules: egress unchanged
    assert reaches() == (True, True, True, True)
    # An egress rule: tcp 8080 to its network. Nothing else leaves it, not even to its own
    # network's machines or by ICMP...
    node.set_groups({"a": Groups(ingress, (Allow("tcp", 8080, 8080, network),))})
    assert reaches() == (True, False, False, False)
    # ...but replies to what its ingress rules let in do (b is in no group: it sends freely).
    assert topo.get(b, "10.77.7.2", 8000) == "a\n"
    assert topo.ping(b, "10.77.7.2") is False  # ingress: tcp 8000 only
    # A rule to the world on its network's NAT: out there too; an egress rule narrows the
    # network's egress policy, it never widens it (see test_egress_by_nat_but_not_to_169_254).
    world = Allow("tcp", 80, 80, ("0.0.0.0/0",))
    node.set_groups({"a": Groups(ingress, (Allow("tcp", 8080, 8080, network), world))})
    assert reaches() == (True, False, True, False)
    assert topo.get(a, METADATA_IP, 80) is None
    # b, in no group, was never limited; a out of its groups: everything again.
    assert topo.get(b, "10.77.7.2", 8000) == "a\n"
    node.set_groups({})
    assert reaches() == (True, True, True, True)


def hutch_tables(topo: Topology) -> Any:
    """hutch's two tables in the node's namespace, as nft lists them (see `canonical`)."""
    listed: list[Any] = []
    for family in ("bridge", "inet"):
        out = topo.run(topo.node, "nft", "-j", "list", "table", family, "hutch").stdout
        listed += json.loads(out)["nftables"]
    return canonical({"nftables": listed})


def test_changes_one_at_a_time_end_in_the_tables_a_full_apply_makes(
    topo: Topology, node: NodeNetwork
) -> None:
    # Each plug, unplug and group change sends nft only what changed; after a random run of
    # them the tables are exactly those a restarted agent's reconcile (a full apply) makes.
    rng = random.Random(12)
    plugged: dict[str, SandboxSpec] = {}
    groups: dict[str, Groups] = {}
    rules = [
        Groups((Allow("tcp", 80, 80, ("0.0.0.0/0",)),)),
        Groups((), (Allow("udp", 53, 53, ("10.77.7.0/24",)),)),
        Groups((Allow("icmp", 0, 0, ("10.77.8.0/24", "fd77:0:0:8::/64")),), ()),
    ]
    for step in range(40):
        action = rng.choice(["plug", "plug", "unplug", "groups"]) if plugged else "plug"
        if action == "plug":
            vni = rng.choice([7, 8])
            extra = {"egress": "allow-list", "egress_allow": ("192.0.2.0/24",)} if vni == 8 else {}
            ports = (f"{8000 + step}:80",) if rng.random() < 0.4 else ()
            new = spec(f"s{step}", vni, 10 + step, *ports, **extra)
            node.plug_netns(new)
            plugged[new.id] = new
        elif action == "unplug":
            gone = rng.choice(sorted(plugged))
            node.unplug(gone)
            del plugged[gone]
            groups.pop(gone, None)
        else:
            for sandbox in rng.sample(sorted(plugged), min(len(plugged), 3)):
                choice = rng.choice([None, *rules])
                if choice is None:
                    groups.pop(sandbox, None)
                else:
                    groups[sandbox] = choice
            node.set_groups(dict(groups))
    assert plugged
    incremental = hutch_tables(topo)
    node.close()  # the agent gone: its published ports' sockets with it
    fresh = NodeNetwork(node.opts)
    fresh.set_groups(dict(groups))
    fresh.reconcile(list(plugged.values()))
    assert hutch_tables(topo) == incremental


def test_a_change_that_nft_refuses_replaces_the_tables_whole(
    topo: Topology, node: NodeNetwork
) -> None:
    a = node.plug_netns(spec("a", 7, 2))
    node.plug_netns(spec("b", 7, 3))
    assert topo.ping(a, "10.77.7.3")
    # Behind hutch's back: the bridge table goes. The next plug's change (its port's chain and
    # map elements) finds nothing to change: nft refuses it, and the tables are made anew.
    topo.run(topo.node, "nft", "delete", "table", "bridge", "hutch")
    node.plug_netns(spec("c", 7, 4))
    after = hutch_tables(topo)
    fresh = NodeNetwork(node.opts)
    fresh.reconcile([spec("a", 7, 2), spec("b", 7, 3), spec("c", 7, 4)])
    assert hutch_tables(topo) == after
    assert topo.ping(a, "10.77.7.4")


def test_a_sleeping_sandboxs_published_port_is_held_for_its_waker_only(
    topo: Topology, node: NodeNetwork
) -> None:
    """While a sandbox sleeps (`set_asleep`), a new connection to its published port comes to
    the socket that holds the port (where the agent's waker accepts), from outside and from the
    node itself; a sandbox reaches it by no address, nor another port; once it wakes, the port
    is forwarded to it again. The connection tracking shows the flows to it. The waker's
    checks against security groups and its own way in."""
    a = node.plug_netns(spec("a", 7, 2, "8080:80"))
    b = node.plug_netns(spec("b", 8, 2))
    topo.serve_http(a, "0.0.0.0", 80, "published\n")
    assert topo.get(topo.outside, NODE_IP, 8080) == "published\n"
    # In a group that lets only the outside host in: the waker admits whom the group admits,
    # and its own (marked) connection from the node gets in where an unmarked one does not.
    node.set_groups({"a": Groups(ingress=(Allow("tcp", 80, 80, (f"{OUTSIDE_IP}/32",)),))})
    assert node.admits("a", 80, OUTSIDE_IP) and not node.admits("a", 80, "127.0.0.1")
    assert not node.admits("a", 81, OUTSIDE_IP) and node.admits("b", 81, "127.0.0.1")
    assert topo.get(topo.outside, NODE_IP, 8080) == "published\n"
    assert topo.get(topo.node, "10.77.7.2", 80) is None
    with node.waker_socket() as marked:
        marked.settimeout(5)
        marked.connect(("10.77.7.2", 80))
        marked.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert marked.makefile("rb").read().endswith(b"\r\n\r\npublished\n")
    node.set_groups({})
    target = ("tcp", "10.77.7.2", 80)
    flows = node.flows([target])
    assert flows and {f.target for f in flows} == {target}
    assert activity.active(flows, set()) == {target}  # new since the last look
    assert activity.active(flows, {f.key for f in flows}) == set()  # closed, seen before

    held = node.set_asleep(["a"])
    assert list(held) == ["a"] and list(held["a"]) == [PortMapping.parse("8080:80")]
    waker = held["a"][PortMapping.parse("8080:80")]
    waker.settimeout(0.2)
    stop = threading.Event()
    accepted: list[str] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = waker.accept()
            except TimeoutError:
                continue
            with conn:
                accepted.append(peer[0])
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nwaker\n")

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        assert topo.get(topo.outside, NODE_IP, 8080) == "waker\n"
        assert topo.get(topo.node, "127.0.0.1", 8080) == "waker\n"
        for address in (NODE_IP, "10.77.8.1", "10.77.7.1"):
            assert topo.get(b, address, 8080) is None  # another machine cannot wake it
        assert topo.get(topo.outside, NODE_IP, 8081) is None  # nor a port it does not publish
        assert accepted == [OUTSIDE_IP, "127.0.0.1"]
        assert node.set_asleep(["a"]) == {}  # asleep already: the waker has its copy
        assert node.set_asleep([]) == {}
        assert topo.get(topo.outside, NODE_IP, 8080) == "published\n"
        assert len(accepted) == 2
    finally:
        stop.set()
        thread.join()
        waker.close()


def test_a_suspended_micro_vms_port_is_held_again_by_a_restarted_agent(
    topo: Topology, node: NodeNetwork
) -> None:
    """A suspended micro-VM has no TAP (it went with its QEMU); an agent that restarts wires
    it anyway, holding its published port, so its waker accepts there once it sleeps."""
    vm = spec("vm", 7, 2, "8080:80")
    for fd in node.open_taps(vm):
        os.close(fd)  # QEMU, gone: its TAP with it
    node.close()  # the agent gone: its published ports' sockets with it
    fresh = NodeNetwork(node.opts)
    fresh.reconcile([vm])  # not said suspended: nothing holds its port
    assert fresh.set_asleep(["vm"]) == {}
    fresh.set_asleep([])
    fresh.reconcile([vm], suspended=["vm"])
    held = fresh.set_asleep(["vm"])
    waker = held["vm"][PortMapping.parse("8080:80")]
    waker.settimeout(10)

    def accept() -> None:
        conn, _ = waker.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nwaker\n")

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        assert topo.get(topo.outside, NODE_IP, 8080) == "waker\n"
    finally:
        thread.join()
        waker.close()
        fresh.reconcile([])
