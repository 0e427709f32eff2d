"""Networks, their addresses and fences, machines' published ports, security groups and their
rules, and the controller's facts: the repositories and their rows.

Address management. `assign()` takes the lowest free host number of a network and inserts it in
a savepoint; the unique constraints (network and host, ip4, ip6; MAC controller-wide) refuse a
number another transaction took meanwhile, and it reads again and takes the next. So an address
is never given twice, on SQLite (one writer at a time anyway) and on PostgreSQL (READ
COMMITTED: the losing insert waits for the winner's commit, then fails, then sees it).
Network slots (VNI, IPv6 /64) and pool /24s are taken the same way by `create()`'s caller.

Chosen subnets. A subnet a project chooses must overlap no network on the controller, whatever
its project. An overlap is not something a unique index can refuse, so the caller first takes a
controller-wide lock, `lock_fact("ula48")` (that row FOR UPDATE on PostgreSQL; SQLite's BEGIN
IMMEDIATE is one writer at a time already), held until the transaction ends, then reads every
network's `subnets()`: two projects choosing the same subnet at once are checked one after the
other, and the second sees the first's network (READ COMMITTED: each statement sees what was
committed before it began).
"""

import builtins
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.addressing import (
    Address,
    Network,
    Rule,
    SecurityGroup,
    ShownWiring,
    address_of,
    host_range,
    lowest_free,
)
from hutch.model.errors import Conflict, NoCapacity, NotFound
from hutch.model.machine import ACTIVE, MachineState
from hutch.model.network import PortMapping
from hutch.store import tables as t
from hutch.store.sql.repo import Conn, Repo, among, by_ref, from_row

ASSIGN_TRIES = 64  # a create losing this many races in a row gives up (Conflict: retry)


V = TypeVar("V")


async def _per_machine(
    conn: Conn,
    table: sa.Table,
    machine_ids: Sequence[str],
    order: Sequence[Any],
    make: Callable[[Row[Any]], V],
    *,
    pg: bool,
) -> dict[str, list[V]]:
    """Rows of `table` for each of `machine_ids` (every id a key, in `order`), made into values."""
    found: dict[str, list[V]] = {m: [] for m in machine_ids}
    if machine_ids:
        key = (table, pg, *order)
        if (stmt := _PER_MACHINE.get(key)) is None:
            stmt = _PER_MACHINE[key] = (
                sa.select(table)
                .where(among(table.c.machine_id, pg))
                .order_by(table.c.machine_id, *order)
            )
        for r in (await conn.execute(stmt, {"ids": sorted(set(machine_ids))})).all():
            found[r.machine_id].append(make(r))
    return found


# _per_machine()'s statements, built once: building one costs more than running it.
_PER_MACHINE: dict[tuple[Any, ...], sa.Select[Any]] = {}
# Likewise (PostgreSQL's, SQLite's): every page of machines names its networks.
_NETWORKS_BY_IDS = {
    pg: sa.select(t.networks).where(among(t.networks.c.id, pg)) for pg in (True, False)
}


def _shown(pg: bool) -> "sa.CompoundSelect[Any]":
    """shown()'s statement: its three kinds of rows in one (each statement costs as much as
    reading a page's addresses), alike in their columns: machine id, kind, key, port and four
    texts. Addresses (0): NIC position, network name, network id, mac, ip4, ip6; ports (1):
    host port, port, protocol, host ip; security groups (2): position, name."""
    a, n, p = t.network_addresses, t.networks, t.machine_ports
    g, sg = t.machine_security_groups, t.security_groups
    no_int, no_text = sa.cast(sa.null(), sa.Integer), sa.cast(sa.null(), sa.String)
    kinds = [
        sa.select(a.c.machine_id.label("machine_id"), sa.literal(0).label("kind"),
                  a.c.position.label("key"), no_int.label("port"), n.c.name.label("text1"),
                  a.c.network_id, a.c.mac, a.c.ip4, a.c.ip6)
        .join(n, n.c.id == a.c.network_id)
        .where(among(a.c.machine_id, pg)),
        sa.select(p.c.machine_id, sa.literal(1), p.c.host_port, p.c.port, p.c.protocol,
                  p.c.host_ip, no_text, no_text, no_text)
        .where(among(p.c.machine_id, pg)),
        sa.select(g.c.machine_id, sa.literal(2), g.c.position, no_int, sg.c.name, no_text,
                  no_text, no_text, no_text)
        .join(sg, sg.c.id == g.c.group_id)
        .where(among(g.c.machine_id, pg)),
    ]  # fmt: skip
    return sa.union_all(*kinds).order_by("machine_id", "kind", "key", "text1")


_SHOWN = {pg: _shown(pg) for pg in (True, False)}  # built once, as _NETWORKS_BY_IDS


_NAMED = 5  # machines a refused delete names


class SqlNetworks(Repo):
    # -- facts ----------------------------------------------------------------------------------

    async def fact(self, key: str, candidate: str) -> str:
        """The stored value of `key`, storing `candidate` if there is none yet (the first
        writer's value wins, for every controller)."""
        await self._insert(t.facts, {"key": key, "value": candidate})
        row = await self._one(sa.select(t.facts.c.value).where(t.facts.c.key == key))
        assert row is not None
        return str(row.value)

    async def lock_fact(self, key: str) -> None:
        """Hold the fact's row until the transaction ends (a controller-wide lock)."""
        stmt = sa.select(t.facts.c.key).where(t.facts.c.key == key)
        if self._pg:
            stmt = stmt.with_for_update()
        await self._found(stmt, "fact", key)

    # -- networks -------------------------------------------------------------------------------

    async def create(self, network: Network) -> bool:
        """False if its slot or pool /24 was taken meanwhile (take another and retry);
        Conflict if the project has a network of that name."""
        n = t.networks
        if await self._insert(n, _network_values(network)):
            return True
        if await self._exists(n, n.c.project_id == network.project_id, n.c.name == network.name):
            raise Conflict(f"the project already has a network named {network.name!r}")
        if not await self._exists(t.projects, t.projects.c.id == network.project_id):
            raise NotFound(f"project {network.project_id!r} not found")
        return False

    async def slots(self) -> builtins.list[tuple[int, int | None]]:
        """Every network's (slot, pool4)."""
        n = t.networks
        return [(r.slot, r.pool4) for r in await self._c.execute(sa.select(n.c.slot, n.c.pool4))]

    async def subnets(self) -> builtins.list[tuple[str, str, str, str]]:
        """Every network's (project id, name, subnet4, subnet6), on the whole controller."""
        n = t.networks
        stmt = sa.select(n.c.project_id, n.c.name, n.c.subnet4, n.c.subnet6)
        return [tuple(r) for r in await self._c.execute(stmt.order_by(n.c.created_at, n.c.id))]

    async def get(self, project_id: str, ref: str) -> Network:
        """By id or name, within the project; NotFound otherwise."""
        row = await self._found(_NETWORK, "network", ref, by_ref(project_id, ref))
        return _to_network(row)

    async def list(self, project_id: str) -> builtins.list[Network]:
        n = t.networks
        stmt = sa.select(n).where(n.c.project_id == project_id).order_by(n.c.created_at, n.c.id)
        return [_to_network(r) for r in await self._c.execute(stmt)]

    async def by_ids(self, ids: Sequence[str]) -> dict[str, Network]:
        if not ids:
            return {}
        stmt = _NETWORKS_BY_IDS[self._pg]
        rows = (await self._c.execute(stmt, {"ids": sorted(set(ids))})).all()
        return {r.id: _to_network(r) for r in rows}

    async def delete(self, project_id: str, network_id: str) -> None:
        """Conflict while machines hold addresses on it (destroyed ones lost with a node that
        is not fenced yet included); NotFound if the project has no such network."""
        n, a = t.networks, t.network_addresses
        await self._locked(n, network_id, "network", key=True)
        m = t.machines
        stmt = (
            sa.select(m.c.name, sa.func.count().over().label("held"))
            .join(m, m.c.id == a.c.machine_id)
            .where(a.c.network_id == network_id)
            .order_by(m.c.name)
            .limit(_NAMED)
        )
        rows = (await self._c.execute(stmt)).all()
        if rows:
            held, names = rows[0].held, ", ".join(r.name for r in rows)
            more = f" and {held - len(rows)} more" if held > len(rows) else ""
            raise Conflict(
                f"{held} machine(s) are on this network ({names}{more}): destroy them (or wait "
                "until their lost node is fenced) first"
            )
        done = await self._c.execute(
            sa.delete(n).where(n.c.id == network_id, n.c.project_id == project_id)
        )
        if not done.rowcount:
            raise NotFound(f"network {network_id!r} not found")

    # -- addresses ------------------------------------------------------------------------------

    async def assign(self, network: Network, machine_id: str, position: int) -> Address:
        """The lowest free address of `network`, now the machine's (see the module's
        docstring); NoCapacity when the network is full."""
        a = t.network_addresses
        first, last = host_range(network.subnet4)
        for _ in range(ASSIGN_TRIES):
            used = (await self._c.execute(_HOSTS, {"network_id": network.id})).scalars()
            host = lowest_free(used, first, last)
            if host is None:
                raise NoCapacity(
                    f"network {network.name} ({network.subnet4}) has no free address left"
                )
            address = address_of(network, machine_id, position, host)
            values = {
                "network_id": address.network_id,
                "machine_id": address.machine_id,
                "position": address.position,
                "host": address.host,
                "mac": address.mac,
                "ip4": address.ip4,
                "ip6": address.ip6,
            }
            if await self._insert(a, values):
                return address
            if await self._exists(a, a.c.network_id == network.id, a.c.machine_id == machine_id):
                raise Conflict(f"machine {machine_id} is on network {network.name} already")
        raise Conflict(f"too many machines took addresses on network {network.name} at once: retry")

    async def addresses(self, machine_ids: Sequence[str]) -> dict[str, builtins.list[Address]]:
        """Each machine's addresses, eth0 first."""
        a = t.network_addresses
        return await _per_machine(
            self._c, a, machine_ids, [a.c.position], lambda r: from_row(Address, r), pg=self._pg
        )

    async def shown(self, machine_ids: Sequence[str]) -> dict[str, ShownWiring]:
        found = {m: ShownWiring([], [], []) for m in machine_ids}
        if machine_ids:
            # all(): one fetch, where iterating the result fetches row by row.
            ids = sorted(set(machine_ids))
            result = await self._c.execute(_SHOWN[self._pg], {"ids": ids})
            rows: Iterable[Sequence[Any]] = result.all()
            for m, kind, key, port, text1, text2, text3, text4, text5 in rows:
                if kind == 0:
                    found[m].addresses.append((text1, text2, text3, text4, text5))
                elif kind == 1:
                    found[m].ports.append(PortMapping(key, port, text1, text2))
                else:
                    found[m].security_groups.append(text1)
        return found

    async def peers(
        self, network_ids: Sequence[str]
    ) -> builtins.list[tuple[Address, str, str, str]]:
        """Every placed, live machine on the networks: (address, machine name, machine's
        project id, node id)."""
        if not network_ids:
            return []
        a, m = t.network_addresses, t.machines
        stmt = (
            sa.select(a, m.c.name.label("machine_name"), m.c.project_id, m.c.node_id)
            .join(m, m.c.id == a.c.machine_id)
            .where(a.c.network_id.in_(sorted(set(network_ids))), m.c.node_id.is_not(None), t.LIVE)
            .order_by(a.c.network_id, a.c.host)
        )
        rows = await self._c.execute(stmt)
        return [(from_row(Address, r), r.machine_name, r.project_id, r.node_id) for r in rows]

    async def counts(self, network_ids: Sequence[str]) -> dict[str, int]:
        """How many machines hold addresses on each network."""
        if not network_ids:
            return {}
        a = t.network_addresses
        stmt = (
            sa.select(a.c.network_id, sa.func.count())
            .where(a.c.network_id.in_(sorted(set(network_ids))))
            .group_by(a.c.network_id)
        )
        rows: list[tuple[Any, ...]] = [tuple(r) for r in await self._c.execute(stmt)]
        return {str(network): int(count) for network, count in rows}

    async def release(self, machine_id: str) -> None:
        """The machine is destroyed: its addresses are free again, unless it was lost with a
        node that is not fenced yet (then `fenced()` frees them)."""
        if await self._exists(t.fences, t.fences.c.machine_id == machine_id):
            return
        a = t.network_addresses
        await self._c.execute(sa.delete(a).where(a.c.machine_id == machine_id))

    async def fence(self, machine_ids: Sequence[str], node_id: str) -> None:
        """These machines were lost with the node: it may still run them with their addresses."""
        for machine_id in machine_ids:
            await self._insert(t.fences, {"machine_id": machine_id, "node_id": node_id})

    async def fenced(self, node_id: str) -> int:
        """The node can no longer run what it lost (it came back, or was removed): the
        addresses of its lost machines that are destroyed since are free. How many machines'."""
        f, a, m = t.fences, t.network_addresses, t.machines
        await self._c.execute(sa.delete(f).where(f.c.node_id == node_id))
        free = (
            sa.select(m.c.id)
            .where(m.c.state == "destroyed")
            .where(~sa.exists().where(f.c.machine_id == m.c.id))
        )
        done = await self._c.execute(sa.delete(a).where(a.c.machine_id.in_(free)))
        return int(done.rowcount or 0)

    # -- published ports ------------------------------------------------------------------------

    async def publish(self, machine_id: str, ports: Sequence[PortMapping]) -> None:
        for p in ports:
            values = {
                "machine_id": machine_id,
                "host_port": p.host_port,
                "protocol": p.protocol,
                "port": p.port,
                "host_ip": p.host_ip,
            }
            if not await self._insert(t.machine_ports, values):
                raise Conflict(f"host port {p.host_port}/{p.protocol} is published twice")

    async def ports(self, machine_ids: Sequence[str]) -> dict[str, builtins.list[PortMapping]]:
        p = t.machine_ports
        return await _per_machine(
            self._c, p, machine_ids, [p.c.host_port, p.c.protocol],
            lambda r: PortMapping(r.host_port, r.port, r.protocol, r.host_ip), pg=self._pg,
        )  # fmt: skip

    async def ports_taken(self) -> dict[str, builtins.set[tuple[int, str]]]:
        """Node id -> the host ports (port, protocol) its active machines publish (and its
        suspended ones: they publish them again when they resume)."""
        p, m = t.machine_ports, t.machines
        holding = [s.value for s in (*ACTIVE, MachineState.SUSPENDED)]
        stmt = (
            sa.select(m.c.node_id, p.c.host_port, p.c.protocol)
            .join(m, m.c.id == p.c.machine_id)
            .where(m.c.node_id.is_not(None), m.c.state.in_(holding))
        )
        found: dict[str, builtins.set[tuple[int, str]]] = {}
        for r in await self._c.execute(stmt):
            found.setdefault(r.node_id, set()).add((r.host_port, r.protocol))
        return found


class SqlSecurityGroups(Repo):
    async def create(self, group: SecurityGroup) -> None:
        g = t.security_groups
        values = {
            "id": group.id,
            "project_id": group.project_id,
            "name": group.name,
            "created_at": group.created_at,
        }
        if await self._insert(g, values):
            return
        if not await self._exists(t.projects, t.projects.c.id == group.project_id):
            raise NotFound(f"project {group.project_id!r} not found")
        raise Conflict(f"the project already has a security group named {group.name!r}")

    async def get(self, project_id: str, ref: str) -> SecurityGroup:
        row = await self._found(_GROUP, "security group", ref, by_ref(project_id, ref))
        return (await self._with_rules([row]))[0]

    async def list(self, project_id: str) -> builtins.list[SecurityGroup]:
        g = t.security_groups
        stmt = sa.select(g).where(g.c.project_id == project_id).order_by(g.c.created_at, g.c.id)
        return await self._with_rules(list(await self._c.execute(stmt)))

    async def by_ids(self, ids: Sequence[str]) -> dict[str, SecurityGroup]:
        if not ids:
            return {}
        g = t.security_groups
        rows = list(await self._c.execute(sa.select(g).where(g.c.id.in_(sorted(set(ids))))))
        return {sg.id: sg for sg in await self._with_rules(rows)}

    async def _with_rules(self, rows: Sequence[Row[Any]]) -> builtins.list[SecurityGroup]:
        r = t.security_group_rules
        rules: dict[str, builtins.list[tuple[str, Rule]]] = {row.id: [] for row in rows}
        if rows:
            stmt = (
                sa.select(r).where(r.c.group_id.in_(sorted(rules))).order_by(r.c.created_at, r.c.id)
            )
            for x in await self._c.execute(stmt):
                rule = from_row(Rule, x)
                rules[x.group_id].append((x.id, rule))
        return [
            SecurityGroup(row.id, row.project_id, row.name, row.created_at, tuple(rules[row.id]))
            for row in rows
        ]

    async def delete(self, project_id: str, group_id: str) -> None:
        """Conflict while live machines use it, or other groups' rules name it."""
        g, r, mg, m = (
            t.security_groups,
            t.security_group_rules,
            t.machine_security_groups,
            t.machines,
        )
        await self._locked(g, group_id, "security group", key=True)
        users = (
            await self._c.execute(
                sa.select(sa.func.count())
                .select_from(mg.join(m, m.c.id == mg.c.machine_id))
                .where(mg.c.group_id == group_id, t.LIVE)
            )
        ).scalar_one()
        if users:
            raise Conflict(f"{users} machine(s) use this security group: destroy them first")
        named = await self._one(
            sa.select(g.c.name)
            .join(r, r.c.group_id == g.c.id)
            .where(r.c.remote_group == group_id, g.c.id != group_id)
            .limit(1)
        )
        if named is not None:
            raise Conflict(
                f"security group {named.name}'s rules name this group: remove them first"
            )
        await self._c.execute(sa.delete(mg).where(mg.c.group_id == group_id))
        await self._c.execute(sa.delete(r).where(r.c.group_id == group_id))
        done = await self._c.execute(
            sa.delete(g).where(g.c.id == group_id, g.c.project_id == project_id)
        )
        if not done.rowcount:
            raise NotFound(f"security group {group_id!r} not found")

    async def add_rule(self, group_id: str, rule_id: str, rule: Rule, at: float) -> None:
        values = {
            "id": rule_id,
            "group_id": group_id,
            "direction": rule.direction,
            "protocol": rule.protocol,
            "port_min": rule.port_min,
            "port_max": rule.port_max,
            "remote_cidr": rule.remote_cidr,
            "remote_group": rule.remote_group,
            "created_at": at,
        }
        if not await self._insert(t.security_group_rules, values):
            raise NotFound(f"security group {group_id!r} not found")

    async def remove_rule(self, group_id: str, rule_id: str) -> None:
        r = t.security_group_rules
        done = await self._c.execute(
            sa.delete(r).where(r.c.id == rule_id, r.c.group_id == group_id)
        )
        if not done.rowcount:
            raise NotFound(f"no rule {rule_id!r} in this security group")

    async def attach(self, machine_id: str, group_ids: Sequence[str]) -> None:
        for position, group_id in enumerate(group_ids):
            values = {"machine_id": machine_id, "group_id": group_id, "position": position}
            if not await self._insert(t.machine_security_groups, values):
                raise Conflict(f"security group {group_id} is named twice")

    async def nodes(self, group_ids: Sequence[str]) -> builtins.set[str]:
        """The nodes of the live machines in these groups."""
        if not group_ids:
            return set()
        mg, m = t.machine_security_groups, t.machines
        stmt = (
            sa.select(m.c.node_id)
            .join(mg, mg.c.machine_id == m.c.id)
            .where(mg.c.group_id.in_(sorted(set(group_ids))), m.c.node_id.is_not(None), t.LIVE)
            .distinct()
        )
        return {str(r.node_id) for r in await self._c.execute(stmt)}

    async def machines(self, group_id: str) -> builtins.list[str]:
        """The live machines in the group."""
        mg, m = t.machine_security_groups, t.machines
        stmt = (
            sa.select(m.c.id)
            .join(mg, mg.c.machine_id == m.c.id)
            .where(mg.c.group_id == group_id, t.LIVE)
            .order_by(m.c.id)
        )
        return [str(r.id) for r in await self._c.execute(stmt)]

    async def of_machines(self, machine_ids: Sequence[str]) -> dict[str, builtins.list[str]]:
        """Each machine's security group ids, in the order given at its creation."""
        mg = t.machine_security_groups
        return await _per_machine(
            self._c, mg, machine_ids, [mg.c.position], lambda r: r.group_id, pg=self._pg
        )


def _network_values(n: Network) -> dict[str, Any]:
    return {
        "id": n.id,
        "project_id": n.project_id,
        "name": n.name,
        "subnet4": n.subnet4,
        "subnet6": n.subnet6,
        "slot": n.slot,
        "pool4": n.pool4,
        "egress": n.egress,
        "egress_allow": list(n.egress_allow),
        "created_at": n.created_at,
    }


def _to_network(r: Row[Any]) -> Network:
    return from_row(Network, r, egress_allow=tuple(r.egress_allow))


# Built once: every create asks for its networks (the default one at least) and groups.
_NETWORK = Repo._by_ref(t.networks).limit(1)
_GROUP = Repo._by_ref(t.security_groups).limit(1)
_HOSTS = sa.select(t.network_addresses.c.host).where(
    t.network_addresses.c.network_id == sa.bindparam("network_id")
)
