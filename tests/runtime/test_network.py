"""Both runtimes on the node's networks, with real guests (micro-VMs under TCG, crun containers)
in a node namespace of the test's own: what is allowed works, next to each denial."""

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hutch.agent.runtimes import open_driver
from hutch.images.rootfs import PreparedRoot
from hutch.model.errors import Conflict, Unsupported
from hutch.model.network import PortMapping
from hutch.model.sandbox import ProcessSpec, Resources, SandboxSpec
from hutch.network.dns import DnsServer, machine_records
from hutch.network.node import NetworkOptions, NodeNetwork
from hutch.runtime.driver import SandboxDriver
from tests.helpers.runtime import driver_in, make_spec, output, settings_for, wait_for_line
from tests.network.topology import NODE_IP, OUTSIDE_IP, Topology, attachment, topology

pytestmark = pytest.mark.timeout(240)

GET = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {} {} | grep -q {} && echo {} || echo NOT-{}"


def probe(name: str, address: str, port: int, body: str) -> str:
    """A shell line printing NAME if http://address:port/ answers `body`, else NOT-NAME."""
    return GET.format(address, port, body, name, name)


def ping(name: str, address: str) -> str:
    return f"ping -c 1 -W 3 {address} >/dev/null 2>&1 && echo {name} || echo NOT-{name}"


@pytest.fixture
def topo() -> Iterator[Topology]:
    yield from topology()


@pytest.fixture(params=["microvm", "container"])
async def wired(
    request: pytest.FixtureRequest, topo: Topology, short_dir: Path
) -> AsyncIterator[tuple[SandboxDriver, NodeNetwork]]:
    net = NodeNetwork(NetworkOptions(state_dir=short_dir / "net", netns=topo.node_path))
    driver = open_driver(settings_for(short_dir / "state"), request.param, network=net)
    yield driver, net
    for info in await driver.sandboxes():
        await driver.destroy(info.id, force=True)
    await driver.close()
    net.reconcile([])


def spec(root: PreparedRoot, sandbox_id: str, vni: int, host: int, script: str,
         *ports: str) -> SandboxSpec:  # fmt: skip
    return SandboxSpec(
        id=sandbox_id,
        process=ProcessSpec(args=("/bin/sh", "-c", script), env=("PATH=/bin",)),
        rootfs=str(root.rootfs),
        root_disk=str(root.disk),
        resources=Resources(memory_mib=128),
        hostname=sandbox_id,
        networks=(attachment(vni, host),),
        ports=tuple(PortMapping.parse(p) for p in ports),
    )


def hutch_links(topo: Topology) -> list[str]:
    out = topo.run(topo.node, "ip", "-o", "link", "show").stdout
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": h" in line)


async def test_sandboxes_on_a_network_reach_each_other_and_nothing_they_should_not(
    wired: tuple[SandboxDriver, NodeNetwork], topo: Topology, busybox_root: PreparedRoot
) -> None:
    driver, _ = wired
    # A container's root has no CAP_NET_RAW over its namespace (the host's user namespace owns
    # it) and busybox's ping needs a raw socket: ICMP is probed in micro-VMs (and tests/network).
    icmp = driver.name == "microvm"
    topo.serve_http(topo.outside, "0.0.0.0", 80, "outside\n")
    topo.serve_http(topo.node, "0.0.0.0", 9000, "node\n")
    server = (
        "mkdir -p /www && echo hello-a > /www/index.html && cat /etc/resolv.conf /etc/hosts && "
        "echo links: $(ls /sys/class/net) && echo serving && exec httpd -f -p 80 -h /www"
    )
    await driver.create(spec(busybox_root, "a", 7, 2, server, "8080:80", "127.0.0.1:8081:80"))
    await driver.start("a")
    await wait_for_line(driver, "a", b"serving")
    for _ in range(50):  # "serving" is printed just before httpd listens
        if topo.get(topo.node, "10.77.7.2", 80) == "hello-a\n":
            break
        await asyncio.sleep(0.1)
    # from the node's neighbours and from the node itself, through the published ports
    assert topo.get(topo.outside, NODE_IP, 8080) == "hello-a\n"
    assert topo.get(topo.node, "127.0.0.1", 8080) == "hello-a\n"
    assert topo.get(topo.node, "127.0.0.1", 8081) == "hello-a\n"
    assert topo.get(topo.outside, NODE_IP, 8081) is None  # published on 127.0.0.1 only

    same = "; ".join([
        *([ping("PING-A", "10.77.7.2"), ping("PING6-A", "fd77:0:0:7::2")] if icmp else []),
        probe("HTTP-A", "10.77.7.2", 80, "hello-a"),
        probe("HTTP6-A", "fd77:0:0:7::2", 80, "hello-a"),
        probe("EGRESS", OUTSIDE_IP, 80, "outside"),
        probe("METADATA", "169.254.169.254", 80, "outside"),
        probe("GATEWAY", "10.77.7.1", 9000, "node"),
        probe("NODE", NODE_IP, 9000, "node"),
        *([ping("PING-GATEWAY", "10.77.7.1")] if icmp else []),
    ])  # fmt: skip
    await driver.create(spec(busybox_root, "b", 7, 3, same))
    await driver.start("b")
    other = "; ".join([
        *([ping("PING-A", "10.77.7.2")] if icmp else []),
        probe("HTTP-A", "10.77.7.2", 80, "hello-a"),
    ])  # fmt: skip
    await driver.create(spec(busybox_root, "c", 8, 2, other))
    await driver.start("c")
    b_out = (await output(driver, "b"))[0].decode().split()
    c_out = (await output(driver, "c"))[0].decode().split()
    assert b_out == [
        *(["PING-A", "PING6-A"] if icmp else []), "HTTP-A", "HTTP6-A", "EGRESS",
        "NOT-METADATA", "NOT-GATEWAY", "NOT-NODE", *(["NOT-PING-GATEWAY"] if icmp else []),
    ]  # fmt: skip
    # another network, on the same node
    assert c_out == [*(["NOT-PING-A"] if icmp else []), "NOT-HTTP-A"]
    # the guest had its resolver and hosts file from boot
    await driver.stop("a", timeout=2)
    a_out = (await output(driver, "a"))[0].decode()
    assert "nameserver 10.77.7.1\nsearch test.internal\n" in a_out
    assert "10.77.7.2\ta\n" in a_out
    # its own links only (a container's /sys is not the host's: crun alone would bind that)
    assert "links: eth0 lo\n" in a_out
    for sandbox in ("a", "b", "c"):
        await driver.destroy(sandbox)
    assert hutch_links(topo) == []
    assert "10.77." not in topo.run(topo.node, "nft", "list", "ruleset").stdout


async def test_a_guest_that_changes_its_ip_or_mac_gets_nothing_through(
    wired: tuple[SandboxDriver, NodeNetwork], topo: Topology, busybox_root: PreparedRoot
) -> None:
    driver, _ = wired
    if driver.name != "microvm":
        pytest.skip("a container's root has no CAP_NET_ADMIN over its namespace: it cannot try")
    topo.serve_http(topo.outside, "0.0.0.0", 80, "outside\n")
    await driver.create(spec(busybox_root, "a", 7, 2, "echo up; exec sleep 600"))
    await driver.start("a")
    script = "; ".join([
        probe("OWN", OUTSIDE_IP, 80, "outside"),
        ping("OWN-PING", "10.77.7.2"),
        "(ip addr flush dev eth0 scope global; ip addr add 10.77.7.50/24 dev eth0) >/dev/null 2>&1",
        "ip route replace default via 10.77.7.1 >/dev/null 2>&1",
        probe("OTHER-IP", OUTSIDE_IP, 80, "outside"),
        ping("OTHER-IP-PING", "10.77.7.2"),
        "(ip addr flush dev eth0 scope global; ip addr add 10.77.7.3/24 dev eth0) >/dev/null 2>&1",
        "ip route replace default via 10.77.7.1 >/dev/null 2>&1",
        "(ip link set eth0 address 02:00:00:00:07:99; ip neigh flush all) >/dev/null 2>&1",
        probe("OTHER-MAC", OUTSIDE_IP, 80, "outside"),
        ping("OTHER-MAC-PING", "10.77.7.2"),
    ])  # fmt: skip
    await driver.create(spec(busybox_root, "b", 7, 3, script))
    await driver.start("b")
    out = (await output(driver, "b"))[0].decode().split()
    assert out == ["OWN", "OWN-PING", "NOT-OTHER-IP", "NOT-OTHER-IP-PING", "NOT-OTHER-MAC",
                   "NOT-OTHER-MAC-PING"]  # fmt: skip


async def test_create_destroy_cycles_leave_nothing(
    wired: tuple[SandboxDriver, NodeNetwork], topo: Topology, busybox_root: PreparedRoot
) -> None:
    driver, _ = wired
    for i in range(3):
        await driver.create(spec(busybox_root, f"s{i}", 7, 2, "true", "8080:80"))
        await driver.destroy(f"s{i}", force=True)
    assert hutch_links(topo) == []
    assert "10.77." not in topo.run(topo.node, "nft", "list", "ruleset").stdout


async def test_an_agent_that_restarts_keeps_a_running_guests_network(
    wired: tuple[SandboxDriver, NodeNetwork], topo: Topology, busybox_root: PreparedRoot
) -> None:
    driver, net = wired
    server = "mkdir -p /www && echo hello-a > /www/index.html && exec httpd -f -p 80 -h /www"
    await driver.create(spec(busybox_root, "a", 7, 2, server, "8080:80"))
    await driver.start("a")
    for _ in range(100):
        if topo.get(topo.outside, NODE_IP, 8080) == "hello-a\n":
            break
        await asyncio.sleep(0.1)
    links_before = hutch_links(topo)
    # a new agent (its own NodeNetwork) reconciles with what exists: the same links, the same
    # rules, nothing duplicated; a sandbox that is gone takes its leftovers with it
    stale = spec(busybox_root, "gone", 8, 2, "true")
    net.plug_netns(stale)
    net.close()  # the agent gone: its published ports' sockets with it
    fresh = NodeNetwork(net.opts)
    fresh.reconcile([await driver.spec("a")])
    assert hutch_links(topo) == links_before
    assert topo.get(topo.outside, NODE_IP, 8080) == "hello-a\n"
    rules = topo.run(topo.node, "nft", "list", "ruleset").stdout
    assert rules.count("table inet hutch") == 1
    assert "10.77.8." not in rules


def sections(out: bytes) -> dict[str, str]:
    """`==NAME` lines split a guest's output into named parts."""
    parts = out.decode().split("==")
    return {p.split("\n", 1)[0]: p.split("\n", 1)[1] if "\n" in p else "" for p in parts[1:]}


async def test_guests_resolve_their_networks_names_and_only_those(
    wired: tuple[SandboxDriver, NodeNetwork], topo: Topology, busybox_root: PreparedRoot
) -> None:
    driver, net = wired
    net.dns = DnsServer()
    await net.dns.start()
    try:
        net.dns.update("net-7", machine_records("web", "m-a", "test", "10.77.7.2", "fd77:0:0:7::2"))
        net.dns.update("net-8", machine_records("db", "m-c", "test", "10.77.8.2", "fd77:0:0:8::2"))
        await driver.create(spec(busybox_root, "a", 7, 2, "echo up; exec sleep 600"))
        await driver.start("a")
        # resolv.conf (from boot) says: nameserver 10.77.<vni>.1, search test.internal
        ask = "; ".join(f"echo =={label}; nslookup {name} 2>&1" for label, name in (
            ("short", "web"), ("id", "m-a.test.internal"), ("own", "db"),
            ("outside", "example.com"),
        ))  # fmt: skip
        await driver.create(spec(busybox_root, "b", 7, 3, ask))
        await driver.start("b")
        await driver.create(spec(busybox_root, "c", 8, 2, ask))
        await driver.start("c")
        b = sections((await output(driver, "b"))[0])
        c = sections((await output(driver, "c"))[0])
        # on web's network: its name (through the search domain) and its id, v4 and v6
        for part in (b["short"], b["id"]):
            assert "10.77.7.2" in part and "fd77:0:0:7::2" in part, b
        assert "NXDOMAIN" in b["own"]
        # on another network (same project, same node): web does not exist, its own db does
        assert "NXDOMAIN" in c["short"] and "10.77.7.2" not in c["short"], c
        assert "10.77.8.2" in c["own"]
        # not an open resolver
        for out in (b, c):
            assert "REFUSED" in out["outside"], out
    finally:
        await net.dns.close()


@pytest.mark.parametrize("runtime", ["microvm", "container"])
async def test_a_node_without_networking_refuses_networked_sandboxes_alike(
    runtime: str, short_dir: Path, busybox_root: PreparedRoot
) -> None:
    """Both runtimes refuse a sandbox with networks the same way when the node's networking is
    not set up (no wiring), before making anything; without networks the same sandbox runs."""
    async for driver in driver_in(short_dir / "state", runtime):
        networked = dataclasses.replace(
            make_spec(busybox_root, "/bin/echo", "up"), networks=(attachment(7, 2),)
        )
        with pytest.raises(Unsupported, match="this node has no networking set up"):
            await driver.create(networked)
        assert await driver.sandboxes() == []  # refused before anything was made
        await driver.create(dataclasses.replace(networked, networks=()))
        await driver.start("sb")
        out, _ = await output(driver, "sb")
        assert out == b"up\n"


async def test_a_clone_of_a_snapshot_takes_its_own_address_and_mac(
    topo: Topology, busybox_root: PreparedRoot, short_dir: Path
) -> None:
    """The snapshot's guest had the original's MAC and addresses: a clone sets its own before
    its workload continues, so the node's anti-spoofing lets it through, and it answers at its
    own address. A resume whose published port was taken meanwhile is refused and keeps the
    machine's disk: it resumes once the port is free."""
    net = NodeNetwork(NetworkOptions(state_dir=short_dir / "net", netns=topo.node_path))
    driver = open_driver(settings_for(short_dir / "state"), "microvm", network=net)
    try:
        await driver.create(spec(busybox_root, "orig", 5, 2, "echo up; sleep 600", "18080:80"))
        await driver.start("orig")
        await wait_for_line(driver, "orig", b"up")
        await driver.snapshot("orig", short_dir / "snap")
        clone = spec(busybox_root, "clone", 5, 3, "true")
        await driver.create(dataclasses.replace(clone, restore_from=str(short_dir / "snap")))
        await driver.start("clone")
        script = (
            "cat /sys/class/net/eth0/address; hostname; grep clone /etc/hosts | cut -f1; "
            + ping("orig", "10.77.5.2")
        )
        proc = await driver.exec("clone", ProcessSpec(args=("/bin/sh", "-c", script)))
        _, out, _ = await proc.communicate()
        assert out.decode().split() == [
            "02:00:00:00:05:03", "clone", "10.77.5.3", "fd77:0:0:5::3", "orig"
        ]  # fmt: skip
        proc = await driver.exec(
            "orig", ProcessSpec(args=("/bin/sh", "-c", ping("clone", "10.77.5.3")))
        )
        _, out, _ = await proc.communicate()
        assert out.decode().split() == ["clone"]

        kept = ProcessSpec(args=("/bin/sh", "-c", "echo kept >/kept"))
        assert (await (await driver.exec("orig", kept)).communicate())[0].code == 0
        await driver.suspend("orig")
        topo.serve_http(topo.node, "0.0.0.0", 18080, "taken")
        with pytest.raises(Conflict, match="cannot be published"):
            await driver.resume("orig")
        topo.servers[-1].kill()
        topo.servers[-1].wait()
        await driver.resume("orig")  # its scratch disk (its root's writes) is still there
        proc = await driver.exec("orig", ProcessSpec(args=("/bin/cat", "/kept")))
        assert (await proc.communicate())[1] == b"kept\n"

        # Parked (its TAP kept off its bridge) and resumed in the same QEMU: on its network
        # again. Destroyed while parked, its QEMU ends.
        await driver.suspend("orig")
        qemu = driver._get("orig").record.process
        assert qemu is not None and qemu.alive()
        await driver.resume("orig")
        proc = await driver.exec(
            "clone", ProcessSpec(args=("/bin/sh", "-c", ping("orig", "10.77.5.2")))
        )
        assert (await proc.communicate())[1].split() == [b"orig"]
        await driver.suspend("orig")
        await driver.destroy("orig", force=True)
        assert not qemu.alive()
    finally:
        for info in await driver.sandboxes():
            await driver.destroy(info.id, force=True)
        await driver.close()
        net.reconcile([])
