"""The store contract for networks, addresses, fences, ports and security groups, on SQLite and
PostgreSQL alike; and that an address is never given twice under concurrent creates."""

import asyncio
import ipaddress
from dataclasses import replace

import pytest

from hutch.model.addressing import Network, Rule, SecurityGroup, subnet6_of
from hutch.model.errors import Conflict, NoCapacity, NotFound
from hutch.model.machine import MachineState
from hutch.model.network import PortMapping
from hutch.store.sql import SqlStore
from tests.store import factories as f

ULA = "fd12:3456:789a::/48"


def network(
    project_id: str, name: str, slot: int, subnet4: str, pool4: int | None = None
) -> Network:
    return Network(
        id=f.uid("net"),
        project_id=project_id,
        name=name,
        subnet4=subnet4,
        subnet6=subnet6_of(ULA, slot),
        slot=slot,
        created_at=f.now(),
        pool4=pool4,
    )


async def setup(store: SqlStore, subnet4: str = "10.1.0.0/24") -> tuple[str, Network]:
    p = f.project()
    net = network(p.id, "default", 1, subnet4, 0)
    async with store.write() as tx:
        await tx.projects.create(p)
        assert await tx.networks.create(net)
    return p.id, net


async def test_network_round_trip_and_refusals(store: SqlStore) -> None:
    project_id, net = await setup(store)
    async with store.write() as tx:
        assert await tx.networks.get(project_id, "default") == net
        assert await tx.networks.get(project_id, net.id) == net
        assert await tx.networks.list(project_id) == [net]
        assert await tx.networks.slots() == [(1, 0)]
        with pytest.raises(Conflict, match="named 'default'"):
            await tx.networks.create(network(project_id, "default", 2, "10.2.0.0/24"))
        # Another's slot or pool /24: False, so the caller takes another.
        assert not await tx.networks.create(network(project_id, "b", 1, "10.2.0.0/24"))
        assert not await tx.networks.create(network(project_id, "b", 2, "10.2.0.0/24", 0))
        assert await tx.networks.create(network(project_id, "b", 2, "10.2.0.0/24"))
        with pytest.raises(NotFound):
            await tx.networks.get("p-other", net.id)
    async with store.write() as tx:
        assert await tx.networks.fact("ula48", ULA) == ULA
        assert await tx.networks.fact("ula48", "fd00::/48") == ULA  # the first one stays


async def test_addresses_are_the_lowest_free_and_stable(store: SqlStore) -> None:
    project_id, net = await setup(store)
    machines = [f.machine(project_id) for _ in range(3)]
    async with store.write() as tx:
        for m in machines:
            await tx.machines.create(m)
            await tx.networks.assign(net, m.id, 0)
    async with store.read() as tx:
        found = await tx.networks.addresses([m.id for m in machines])
    ips = [found[m.id][0].ip4 for m in machines]
    assert ips == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    first = found[machines[0].id][0]
    assert first.mac == "02:00:01:00:00:02"
    assert first.ip6 == "fd12:3456:789a:1::2"
    # A destroyed machine's address is free again, and the lowest is taken first.
    async with store.write() as tx:
        await tx.machines.update(replace(machines[1], state=MachineState.DESTROYED))
        await tx.networks.release(machines[1].id)
        again = f.machine(project_id)
        await tx.machines.create(again)
        assert (await tx.networks.assign(net, again.id, 0)).ip4 == "10.1.0.3"
        with pytest.raises(Conflict, match="already"):
            await tx.networks.assign(net, again.id, 1)
        assert await tx.networks.counts([net.id]) == {net.id: 3}
        with pytest.raises(Conflict, match="machine"):
            await tx.networks.delete(project_id, net.id)


async def test_shown_wiring_in_the_machines_order(store: SqlStore) -> None:
    project_id, net = await setup(store)
    back = network(project_id, "back", 2, "10.2.0.0/24")
    # "web" sorts after "db": the groups' order is the machine's, not their names'.
    web = SecurityGroup(f.uid("sg"), project_id, "web", f.now())
    db = SecurityGroup(f.uid("sg"), project_id, "db", f.now())
    wired, bare = f.machine(project_id), f.machine(project_id)
    async with store.write() as tx:
        assert await tx.networks.create(back)
        for m in (wired, bare):
            await tx.machines.create(m)
        # eth1 assigned first: the order is the NICs', not the rows'.
        await tx.networks.assign(back, wired.id, 1)
        await tx.networks.assign(net, wired.id, 0)
        await tx.networks.publish(wired.id, [PortMapping(8080, 80), PortMapping(53, 53, "udp")])
        for g in (web, db):
            await tx.security_groups.create(g)
        await tx.security_groups.attach(wired.id, [web.id, db.id])
    async with store.read() as tx:
        shown = await tx.networks.shown([wired.id, bare.id])
        held = (await tx.networks.addresses([wired.id]))[wired.id]
        ports = (await tx.networks.ports([wired.id]))[wired.id]
    assert shown == {
        wired.id: (
            [
                (n.name, a.network_id, a.mac, a.ip4, a.ip6)
                for a, n in zip(held, (net, back), strict=True)
            ],
            ports,
            ["web", "db"],
        ),
        bare.id: ([], [], []),
    }
    assert [a.position for a in held] == [0, 1]


async def test_a_full_network_says_so(store: SqlStore) -> None:
    project_id, net = await setup(store, "10.1.0.0/29")  # hosts 2..6
    async with store.write() as tx:
        for _ in range(5):
            m = f.machine(project_id)
            await tx.machines.create(m)
            await tx.networks.assign(net, m.id, 0)
        m = f.machine(project_id)
        await tx.machines.create(m)
        with pytest.raises(NoCapacity, match="no free address"):
            await tx.networks.assign(net, m.id, 0)


async def create_on_network(store: SqlStore, project_id: str, net: Network) -> str:
    """A machine and its address in one write transaction, without the project's lock: only
    the unique constraints and the retry keep addresses apart."""
    for _ in range(20):
        try:
            async with store.write() as tx:
                m = f.machine(project_id)
                await tx.machines.create(m)
                await asyncio.sleep(0.001)  # widen the window a race needs
                return (await tx.networks.assign(net, m.id, 0)).ip4
        except Conflict:  # PostgreSQL: a transaction that collided; the caller retries
            continue
    raise AssertionError("never got an address")


async def test_concurrent_creates_never_share_an_address(store: SqlStore) -> None:
    project_id, net = await setup(store, "10.1.0.0/24")
    ips = await asyncio.gather(*(create_on_network(store, project_id, net) for _ in range(40)))
    assert len(set(ips)) == 40
    async with store.read() as tx:
        rows = [a for found in (await tx.networks.addresses(
            [m.id for m in (await tx.machines.list(project_id, limit=200))[0]]
        )).values() for a in found]  # fmt: skip
    assert len({a.mac for a in rows}) == len({a.ip6 for a in rows}) == len(rows) == 40
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(net.subnet4) for ip in ips)


async def test_a_chosen_ipv6_64_gives_each_address_once(store: SqlStore) -> None:
    """A network whose /64 the project chose (outside the controller's /48): its machines' IPv6
    addresses come from that /64, none twice under concurrent creates; another project's
    network of the same /64 (made before the controller refused that: see the next test)
    numbers its own."""
    mine, theirs = f.project(), f.project()
    chosen = "fd00:aaaa:bbbb:cccc::/64"
    nets = [replace(network(p.id, "six", slot, "10.2.0.0/24"), subnet6=chosen)
            for p, slot in ((mine, 7), (theirs, 8))]  # fmt: skip
    async with store.write() as tx:
        for p, net in zip((mine, theirs), nets, strict=True):
            await tx.projects.create(p)
            assert await tx.networks.create(net)
    for p, net in zip((mine, theirs), nets, strict=True):
        await asyncio.gather(*(create_on_network(store, p.id, net) for _ in range(20)))
    async with store.read() as tx:
        found = await tx.networks.addresses(
            [m.id for p in (mine, theirs) for m in (await tx.machines.list(p.id, limit=50))[0]]
        )
    rows = [a for v in found.values() for a in v]
    for net in nets:
        ip6s = [a.ip6 for a in rows if a.network_id == net.id]
        assert len(ip6s) == len(set(ip6s)) == 20
        assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(chosen) for ip in ip6s)
    assert len({a.mac for a in rows}) == 40  # MACs stay unique controller-wide


async def test_chosen_subnets_are_checked_one_create_at_a_time(store: SqlStore) -> None:
    """Creates with a chosen subnet hold one controller-wide lock (the ula48 fact's row) from
    before they read every network's subnets until they commit: of many projects choosing one
    subnet at once, each reads what those before it made, and one gets it."""
    projects = [f.project() for _ in range(6)]
    async with store.write() as tx:
        for p in projects:
            await tx.projects.create(p)
        await tx.networks.fact("ula48", ULA)  # stored already: its insert serialises nothing

    async def choose(p_index: int) -> bool:
        async with store.write() as tx:
            await tx.networks.fact("ula48", ULA)
            await tx.networks.lock_fact("ula48")
            taken = await tx.networks.subnets()
            await asyncio.sleep(0.02)  # widen the window between the check and the insert
            if any(s4 == "172.30.0.0/24" for _, _, s4, _ in taken):
                return False
            net = network(projects[p_index].id, "n", 10 + p_index, "172.30.0.0/24")
            assert await tx.networks.create(net)
            return True

    won = await asyncio.gather(*(choose(i) for i in range(len(projects))))
    assert sorted(won) == [False] * 5 + [True]
    async with store.read() as tx:
        [(project_id, name, subnet4, subnet6)] = await tx.networks.subnets()
    assert (project_id, name, subnet4) == (projects[won.index(True)].id, "n", "172.30.0.0/24")
    assert subnet6 == subnet6_of(ULA, 10 + won.index(True))
    async with store.write() as tx:
        with pytest.raises(NotFound, match="fact 'nothing'"):
            await tx.networks.lock_fact("nothing")


async def test_a_lost_machines_addresses_wait_for_its_node_to_be_fenced(store: SqlStore) -> None:
    project_id, net = await setup(store)
    lost = f.machine(project_id)
    async with store.write() as tx:
        await tx.machines.create(lost)
        held = await tx.networks.assign(net, lost.id, 0)
        await tx.networks.fence([lost.id], "n-gone")
        await tx.machines.update(replace(lost, state=MachineState.DESTROYED))
        await tx.networks.release(lost.id)
        other = f.machine(project_id)
        await tx.machines.create(other)
        assert (await tx.networks.assign(net, other.id, 0)).ip4 != held.ip4
    async with store.write() as tx:
        assert await tx.networks.fenced("n-other") == 0
        assert await tx.networks.fenced("n-gone") == 1
        third = f.machine(project_id)
        await tx.machines.create(third)
        assert (await tx.networks.assign(net, third.id, 0)).ip4 == held.ip4


async def test_published_ports_count_on_their_node_while_active(store: SqlStore) -> None:
    project_id, _ = await setup(store)
    node = f.node()
    m = f.machine(project_id)
    async with store.write() as tx:
        await tx.nodes.create(node, "cred-" + node.id)
        await tx.machines.create(m)
        await tx.networks.publish(m.id, [PortMapping(8080, 80), PortMapping(53, 53, "udp")])
        with pytest.raises(Conflict, match="twice"):
            await tx.networks.publish(m.id, [PortMapping(8080, 81)])
    async with store.write() as tx:
        assert await tx.networks.ports_taken() == {}  # not placed yet
        await tx.machines.place([(m.id, node.id)], f.now())
        assert await tx.networks.ports_taken() == {node.id: {(8080, "tcp"), (53, "udp")}}
        assert (await tx.networks.ports([m.id]))[m.id] == [
            PortMapping(53, 53, "udp"),
            PortMapping(8080, 80),
        ]
        placed = await tx.machines.get(project_id, m.id)
        await tx.machines.update(replace(placed, state=MachineState.EXITED))
        assert await tx.networks.ports_taken() == {}


async def test_security_groups(store: SqlStore) -> None:
    project_id, _ = await setup(store)
    web = SecurityGroup(f.uid("sg"), project_id, "web", f.now())
    db = SecurityGroup(f.uid("sg"), project_id, "db", f.now())
    m = f.machine(project_id)
    async with store.write() as tx:
        await tx.security_groups.create(web)
        await tx.security_groups.create(db)
        with pytest.raises(Conflict, match="named 'web'"):
            await tx.security_groups.create(replace(web, id=f.uid("sg")))
        http = Rule("ingress", "tcp", 80, 80, remote_cidr="0.0.0.0/0")
        await tx.security_groups.add_rule(web.id, "r-1", http, f.now())
        await tx.security_groups.add_rule(
            db.id, "r-2", Rule("ingress", "any", remote_group=web.id), f.now()
        )
        assert (await tx.security_groups.get(project_id, "web")).rules == (("r-1", http),)
        await tx.machines.create(m)
        await tx.security_groups.attach(m.id, [web.id, db.id])
        assert (await tx.security_groups.of_machines([m.id]))[m.id] == [web.id, db.id]
        with pytest.raises(Conflict, match="machine"):
            await tx.security_groups.delete(project_id, db.id)
        await tx.machines.update(replace(m, state=MachineState.DESTROYED))
        with pytest.raises(Conflict, match="db's rules"):
            await tx.security_groups.delete(project_id, web.id)
        with pytest.raises(NotFound):
            await tx.security_groups.remove_rule(web.id, "r-2")
        await tx.security_groups.remove_rule(db.id, "r-2")
        await tx.security_groups.delete(project_id, web.id)
        assert [g.name for g in await tx.security_groups.list(project_id)] == ["db"]


async def test_deleting_a_project_takes_its_networks(store: SqlStore) -> None:
    project_id, net = await setup(store)
    m = f.machine(project_id, state=MachineState.DESTROYED)
    async with store.write() as tx:
        await tx.machines.create(m)
        await tx.networks.assign(net, m.id, 0)
        await tx.networks.fence([m.id], "n-x")
        await tx.networks.publish(m.id, [PortMapping(80, 80)])
        g = SecurityGroup(f.uid("sg"), project_id, "g", f.now())
        await tx.security_groups.create(g)
        await tx.security_groups.add_rule(
            g.id, "r", Rule("egress", "any", remote_cidr="::/0"), f.now()
        )
        await tx.security_groups.attach(m.id, [g.id])
        await tx.projects.delete(project_id)
        assert await tx.networks.slots() == []


async def test_purging_destroyed_machines_takes_their_network_rows_unless_fenced(
    store: SqlStore,
) -> None:
    project_id, net = await setup(store)
    gone = MachineState.DESTROYED
    plain, fenced = (f.machine(project_id, state=gone, updated_at=900.0) for _ in range(2))
    g = SecurityGroup(f.uid("sg"), project_id, "g", f.now())
    async with store.write() as tx:
        await tx.security_groups.create(g)
        for m in (plain, fenced):
            await tx.machines.create(m)
            await tx.networks.assign(net, m.id, 0)
            await tx.networks.publish(m.id, [PortMapping(80, 80)])
            await tx.security_groups.attach(m.id, [g.id])
        await tx.networks.fence([fenced.id], "n-gone")
    async with store.write() as tx:
        assert await tx.machines.purge(1000.0, limit=10) == 1  # not the fenced one
        assert (await tx.networks.addresses([plain.id, fenced.id]))[plain.id] == []
        assert await tx.networks.counts([net.id]) == {net.id: 1}
        await tx.networks.fenced("n-gone")
        assert await tx.machines.purge(1000.0, limit=10) == 1
        assert await tx.networks.counts([net.id]) == {}
        await tx.security_groups.delete(project_id, g.id)
