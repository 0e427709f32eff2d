"""The overlay between two nodes: each node's networking in a namespace of its own (the topology's
"node" and "outside" namespaces, joined by a veth pair that stands in for the underlay), network
namespaces standing in for sandboxes, the peer list as the controller would send it."""

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.model.sandbox import ProcessSpec, SandboxSpec
from hutch.network import links
from hutch.network.node import NetworkOptions, NodeNetwork, Peer
from tests.network.topology import NODE_IP, OUTSIDE_IP, Topology, attachment, sh, topology

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def topo() -> Iterator[Topology]:
    yield from topology()


@pytest.fixture
def nodes(topo: Topology, tmp_path: Path) -> Iterator[tuple[NodeNetwork, NodeNetwork]]:
    a = NodeNetwork(
        NetworkOptions(state_dir=tmp_path / "a", netns=topo.node_path, underlay=NODE_IP)
    )
    b = NodeNetwork(
        NetworkOptions(
            state_dir=tmp_path / "b", netns=Path("/run/netns") / topo.outside, underlay=OUTSIDE_IP
        )
    )
    yield a, b
    a.reconcile([])
    b.reconcile([])


def spec(sandbox_id: str, vni: int, host: int) -> SandboxSpec:
    return SandboxSpec(
        id=sandbox_id, process=ProcessSpec(args=("true",)), networks=(attachment(vni, host),)
    )


def peer(s: SandboxSpec, underlay: str) -> Peer:
    att = s.networks[0]
    return Peer(att.network_id, att.mac, att.ip4, att.ip6, underlay)


def a_and_b(nodes: tuple[NodeNetwork, NodeNetwork]) -> tuple[SandboxSpec, SandboxSpec, Path]:
    """Sandbox a on node A and b on node B, on network 7, each node told of both: a's specs,
    b's, and a's namespace."""
    node_a, node_b = nodes
    sa, sb = spec("a", 7, 2), spec("b", 7, 3)
    a = node_a.plug_netns(sa)
    node_b.plug_netns(sb)
    for node in nodes:
        node.set_peers([peer(sa, NODE_IP), peer(sb, OUTSIDE_IP)])
    return sa, sb, a


def fdb(topo: Topology, ns: str, dev: str) -> list[str]:
    """The MACs with a forwarding entry on `dev` (on the device itself or on its bridge)."""
    out = topo.run(ns, "bridge", "fdb", "show", "dev", dev).stdout
    return sorted(line.strip() for line in out.splitlines()
                  if " self permanent" in line or " static" in line)  # fmt: skip


def neigh(topo: Topology, ns: str, dev: str) -> list[str]:
    out = topo.run(ns, "ip", "neigh", "show", "dev", dev).stdout
    out6 = topo.run(ns, "ip", "-6", "neigh", "show", "dev", dev).stdout
    return sorted({line.strip() for line in (*out.splitlines(), *out6.splitlines())})


def test_a_machine_reaches_its_peer_on_another_node_and_no_other_network(
    topo: Topology, nodes: tuple[NodeNetwork, NodeNetwork]
) -> None:
    node_a, node_b = nodes
    sa, sb, sc = spec("a", 7, 2), spec("b", 7, 3), spec("c", 8, 3)
    a = node_a.plug_netns(sa)
    b = node_b.plug_netns(sb)
    c = node_b.plug_netns(sc)
    peers = [peer(sa, NODE_IP), peer(sb, OUTSIDE_IP), peer(sc, OUTSIDE_IP)]
    node_a.set_peers(peers)
    node_b.set_peers(peers)
    assert topo.ping(a, "10.77.7.3")
    assert topo.ping(a, "fd77:0:0:7::3")
    topo.serve_http(b, "0.0.0.0", 8000, "b\n")
    topo.serve_http(c, "0.0.0.0", 8000, "c\n")
    assert topo.get(a, "10.77.7.3", 8000) == "b\n"
    # ARP/NDP answered on node A: the neighbour entries are there, the flood entry is not
    assert "10.77.7.3 lladdr 02:00:00:00:07:03 PERMANENT" in neigh(topo, topo.node, "hx-7")
    assert not [x for x in fdb(topo, topo.node, "hx-7") if x.startswith("00:00:00:00:00:00")]
    # Node A hosts no machine of network 8: no VXLAN for it, and c is out of a's reach even at
    # layer 2 (a told c's MAC and an on-link route to it, as a hostile guest could be).
    assert "hx-8" not in topo.run(topo.node, "ip", "link", "show").stdout
    assert topo.ok(a, "ip", "route", "add", "10.77.8.0/24", "dev", "eth0")
    assert topo.ok(a, "ip", "neigh", "replace", "10.77.8.3", "lladdr", sc.networks[0].mac,
                   "dev", "eth0")  # fmt: skip
    assert topo.get(a, "10.77.8.3", 8000) is None
    assert not topo.ping(a, "10.77.8.3")
    # ...while the same probe at its own network's peer, the same way, gets through
    assert topo.ok(a, "ip", "neigh", "replace", "10.77.7.3", "lladdr", sb.networks[0].mac,
                   "dev", "eth0")  # fmt: skip
    assert topo.get(a, "10.77.7.3", 8000) == "b\n"


def test_a_peer_gone_takes_its_entries_with_it(
    topo: Topology, nodes: tuple[NodeNetwork, NodeNetwork]
) -> None:
    node_a = nodes[0]
    sa, sb, a = a_and_b(nodes)
    node_a.set_peers([peer(sa, NODE_IP), peer(sb, OUTSIDE_IP)])  # idempotent: nothing twice
    mac = sb.networks[0].mac
    assert fdb(topo, topo.node, "hx-7") == [
        f"{mac} dst {OUTSIDE_IP} self permanent",
        f"{mac} master hn-7 static",
    ]
    assert topo.ping(a, "10.77.7.3")
    node_a.set_peers([peer(sa, NODE_IP)])
    assert fdb(topo, topo.node, "hx-7") == []
    assert neigh(topo, topo.node, "hx-7") == []
    assert not topo.ping(a, "10.77.7.3")


def test_a_sandbox_plugged_beside_another_networks_peers_gets_its_own(
    topo: Topology, nodes: tuple[NodeNetwork, NodeNetwork]
) -> None:
    """A plug syncs only its own network's VXLAN entries; peers of the node's other networks
    (a cluster's usual case) are passed over, not a KeyError that fails the sandbox."""
    node_a, node_b = nodes
    s7, s8, r7, r8 = spec("a7", 7, 2), spec("a8", 8, 2), spec("b7", 7, 3), spec("b8", 8, 3)
    node_a.plug_netns(s8)
    for s in (r7, r8):
        node_b.plug_netns(s)
    peers = [peer(s8, NODE_IP), peer(s7, NODE_IP), peer(r7, OUTSIDE_IP), peer(r8, OUTSIDE_IP)]
    node_a.set_peers(peers)
    node_b.set_peers(peers)
    a7 = node_a.plug_netns(s7)  # network 7 comes to node A while network 8's peers are known
    assert topo.ping(a7, "10.77.7.3")
    assert f"{r8.networks[0].mac} dst {OUTSIDE_IP} self permanent" in fdb(topo, topo.node, "hx-8")


def test_twenty_cycles_leave_nothing_behind(
    topo: Topology, nodes: tuple[NodeNetwork, NodeNetwork]
) -> None:
    node_a, node_b = nodes
    sa = spec("a", 7, 2)
    a = node_a.plug_netns(sa)
    node_a.set_peers([peer(sa, NODE_IP)])
    before = (fdb(topo, topo.node, "hx-7"), neigh(topo, topo.node, "hx-7"))
    for i in range(20):
        sb = spec(f"b{i}", 7, 3 + i)
        node_b.plug_netns(sb)
        peers = [peer(sa, NODE_IP), peer(sb, OUTSIDE_IP)]
        node_a.set_peers(peers)
        node_b.set_peers(peers)
        if i in (0, 19):
            assert topo.ping(a, f"10.77.7.{3 + i}")
        node_b.unplug(sb.id)
        node_a.set_peers([peer(sa, NODE_IP)])
        node_b.set_peers([peer(sa, NODE_IP)])
    assert (fdb(topo, topo.node, "hx-7"), neigh(topo, topo.node, "hx-7")) == before == ([], [])
    # node B hosts network 7 no more: its VXLAN went with its last machine
    assert "hx-" not in topo.run(topo.outside, "ip", "link", "show").stdout


def test_reconcile_keeps_what_is_needed_once_and_only_hutchs(
    topo: Topology, nodes: tuple[NodeNetwork, NodeNetwork], tmp_path: Path
) -> None:
    node_a, node_b = nodes
    sa, sb = spec("a", 7, 2), spec("b", 7, 3)
    a = node_a.plug_netns(sa)
    node_b.plug_netns(sb)
    peers = [peer(sa, NODE_IP), peer(sb, OUTSIDE_IP)]
    node_a.set_peers(peers)
    node_b.set_peers(peers)
    entries = (fdb(topo, topo.node, "hx-7"), neigh(topo, topo.node, "hx-7"))
    # leftovers of an earlier life: hutch's VXLAN of a network gone, and someone else's VXLAN
    for name, alias in (("hx-63", links.ALIAS), ("hx-64", "theirs")):
        assert topo.ok(topo.node, "ip", "link", "add", name, "type", "vxlan", "id",
                       str(int(name[3:], 16)), "dstport", "4789", "local", NODE_IP)  # fmt: skip
        assert topo.ok(topo.node, "ip", "link", "set", name, "alias", alias)
    again = NodeNetwork(
        NetworkOptions(state_dir=tmp_path / "a", netns=topo.node_path, underlay=NODE_IP)
    )
    again.reconcile([sa])
    again.set_peers(peers)
    assert (fdb(topo, topo.node, "hx-7"), neigh(topo, topo.node, "hx-7")) == entries
    shown = topo.run(topo.node, "ip", "link", "show").stdout
    assert "hx-63" not in shown and "hx-64" in shown
    assert topo.ping(a, "10.77.7.3")
    topo.run(topo.node, "ip", "link", "del", "hx-64")


# VXLAN packets as anyone on the underlay (or a hostile sandbox) could send them: flags and VNI
# around an Ethernet frame to `dmac` carrying IPv4/UDP `src`:9999 -> `dst`:`dport` with `text`
# (a valid header: br_netfilter drops bad checksums), `count` times.
VXLAN_SEND = r"""
import socket, struct, sys
to, vni, count, dmac, smac, src, dst, dport, text = sys.argv[1:10]
udp = struct.pack("!HHHH", 9999, int(dport), 8 + len(text), 0) + text.encode()
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
words = sum(struct.unpack("!10H", ip))
while words >> 16:
    words = (words & 0xFFFF) + (words >> 16)
ip = ip[:10] + struct.pack("!H", ~words & 0xFFFF) + ip[12:]
eth = bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex(smac.replace(":", "")) + b"\x08\x00"
packet = struct.pack("!II", 0x08000000, int(vni) << 8) + eth + ip + udp
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(count)):
    s.sendto(packet, (to, 4789))
"""
ROGUE_IP, ROGUE_GW = "198.51.100.2", "198.51.100.1"


def rx_packets(topo: Topology, netns: Path) -> int:
    stats = json.loads(topo.run(netns, "ip", "-j", "-s", "link", "show", "eth0").stdout)
    return int(stats[0]["stats64"]["rx"]["packets"])


def test_vxlan_is_taken_from_peer_nodes_only(
    topo: Topology, nodes: tuple[NodeNetwork, NodeNetwork]
) -> None:
    node_a = nodes[0]
    sa, sb, a = a_and_b(nodes)
    # A third host on node A's underlay (a namespace of its own, on a link of its own).
    rogue = f"{topo.node}r"
    sh("ip", "netns", "add", rogue)
    try:
        sh("ip", "-n", topo.node, "link", "add", "rg0", "type", "veth", "peer", "name", "rg1",
           "netns", rogue)  # fmt: skip
        sh("ip", "-n", topo.node, "addr", "add", f"{ROGUE_GW}/24", "dev", "rg0")
        sh("ip", "-n", topo.node, "link", "set", "rg0", "up")
        sh("ip", "-n", rogue, "addr", "add", f"{ROGUE_IP}/24", "dev", "rg1")
        sh("ip", "-n", rogue, "link", "set", "rg1", "up")
        sh("ip", "-n", rogue, "route", "add", "default", "via", ROGUE_GW)
        frames = (sa.networks[0].mac, sb.networks[0].mac, "10.77.7.3", "10.77.7.2", "9", "x" * 16)

        def delivered(sender: str, to: str) -> int:
            """How many of 100 VXLAN packets from `sender` to node A at `to` reach a."""
            before = rx_packets(topo, a)
            sent = topo.run(sender, sys.executable, "-c", VXLAN_SEND, to, "7", "100", *frames)
            assert sent.returncode == 0, sent.stderr
            return rx_packets(topo, a) - before

        # The peer node's packets get through (the same frames, the same VNI)...
        assert delivered(topo.outside, NODE_IP) >= 100
        assert topo.ping(a, "10.77.7.3")
        # ...anyone else's do not, to any of node A's addresses.
        assert delivered(rogue, NODE_IP) < 10
        assert delivered(rogue, ROGUE_GW) < 10
        # A node that no longer hosts the network is no longer a peer.
        node_a.set_peers([peer(sa, NODE_IP)])
        assert delivered(topo.outside, NODE_IP) < 10
    finally:
        subprocess.run(["ip", "netns", "del", rogue], check=False, capture_output=True)


RECEIVE = (
    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 9000))\n"
    "s.settimeout(5)\n"
    "while True:\n    print(s.recv(100).decode(), flush=True)"
)


def test_a_sandbox_cannot_speak_vxlan_to_another_node(
    topo: Topology, nodes: tuple[NodeNetwork, NodeNetwork]
) -> None:
    """Through its node's NAT, a sandbox's packet to another node's UDP 4789 would arrive from a
    peer's address, and VXLAN checks nothing but the VNI: the frame inside would be delivered
    into that network. Its node drops it; the same packet from the node itself gets through."""
    node_a, node_b = nodes
    sa, sb, sc = spec("a", 7, 2), spec("b", 7, 3), spec("c", 8, 2)
    node_a.plug_netns(sa)
    c = node_a.plug_netns(sc)  # another network's sandbox on node A, with NAT egress
    b = node_b.plug_netns(sb)
    peers = [peer(sa, NODE_IP), peer(sb, OUTSIDE_IP), peer(sc, NODE_IP)]
    node_a.set_peers(peers)
    node_b.set_peers(peers)
    mac_a, mac_b = sa.networks[0].mac, sb.networks[0].mac
    receiver = subprocess.Popen(["nsenter", f"--net={b}", sys.executable, "-c", RECEIVE],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(0.5)
        args = (OUTSIDE_IP, "7", "1", mac_b, mac_a, "10.77.7.2", "10.77.7.3", "9000")
        for _ in range(3):
            assert topo.ok(c, sys.executable, "-c", VXLAN_SEND, *args, "from-sandbox")
        assert topo.ok(topo.node, sys.executable, "-c", VXLAN_SEND, *args, "from-node")
        out, _ = receiver.communicate(timeout=15)
    finally:
        receiver.kill()
        receiver.wait()
    assert "from-node" in out  # the probe works...
    assert "from-sandbox" not in out  # ...and the sandbox's does not get there
