"""Networks and security groups: a project's own, and what a machine joins when it is created.

Every project has a network named `default`, made on first use from the controller's pool
(`network_pool4` cut into `/network_prefix4`s, and a /64 of the ULA /48 chosen once per store).
A project may make more, with subnets of its own (IPv4: private, outside the pool; IPv6: a
unique-local /64 outside the controller's /48; either overlapping no network on the controller,
of any project: see `addressing.IN_USE`). A machine joins the networks named at its creation
(default: the project's default network; `none`: no network), each giving it an address (see
`store/sql/networks.py`), publishes its ports, and is put in its security groups; all of it in
the transaction that creates it.
"""

import builtins
import ipaddress
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from urllib.parse import urlsplit

from hutch.model.addressing import (
    DEFAULT,
    MAX_RULES,
    MAX_SLOT,
    NONE,
    Network,
    Rule,
    SecurityGroup,
    ShownAddress,
    attachment,
    check_egress,
    check_subnet4,
    check_subnet6,
    ip_literals,
    lowest_free,
    new_ula48,
    pool_size,
    pool_subnet,
    shown_address,
    subnet6_of,
)
from hutch.model.errors import Conflict, Invalid, NoCapacity, NotFound
from hutch.model.machine import Machine
from hutch.model.network import Attachment, PortMapping
from hutch.model.tenancy import Principal, Project, validate_name
from hutch.services.ids import new_id
from hutch.services.policy import Action, Policy
from hutch.services.refusals import about, missing
from hutch.store.base import Store, Tx

ULA_FACT = "ula48"
CREATE_TRIES = 32  # slots lost to concurrent creates before giving up (Conflict: retry)
MAX_NETWORKS_PER_MACHINE = 4
MAX_PORTS_PER_MACHINE = 64
MAX_GROUPS_PER_MACHINE = 16
# Per project: networks take controller-wide slots (VNIs, pool subnets, /64s of the ULA /48)
# that every project shares, so one project must not take them all; groups and their rules
# are sent to nodes and matched per packet.
MAX_NETWORKS_PER_PROJECT = 64  # beside the default network, which is always made when needed
MAX_GROUPS_PER_PROJECT = 128


@dataclass(frozen=True, slots=True)
class Pool:
    """Where default networks come from (the settings `network_pool4`, `network_prefix4`)."""

    subnet4: str = "10.96.0.0/11"
    prefix4: int = 24

    def __post_init__(self) -> None:
        try:
            net = ipaddress.IPv4Network(self.subnet4)
        except ValueError:
            raise Invalid(f"network pool {self.subnet4!r} is not an IPv4 CIDR") from None
        if not net.prefixlen <= self.prefix4 <= 29:
            raise Invalid(f"network pool {self.subnet4} cannot be cut into /{self.prefix4}s")


@dataclass(frozen=True, slots=True)
class MachineNet:
    """What a machine asks of the networks when it is created."""

    networks: tuple[str, ...] | None = None  # names or ids; None: the default; ("none",): none
    ports: tuple[PortMapping, ...] = ()
    security_groups: tuple[str, ...] = ()  # names or ids

    def __post_init__(self) -> None:
        nets = self.networks or ()
        if NONE in nets and len(nets) > 1:
            raise Invalid("network 'none' cannot be combined with other networks")
        if len(nets) > MAX_NETWORKS_PER_MACHINE:
            raise Invalid(f"a machine joins at most {MAX_NETWORKS_PER_MACHINE} networks")
        if len(set(nets)) != len(nets):
            raise Invalid("a network is named twice")
        if len(self.ports) > MAX_PORTS_PER_MACHINE:
            raise Invalid(f"a machine publishes at most {MAX_PORTS_PER_MACHINE} ports")
        seen: set[tuple[int, str]] = set()
        for p in self.ports:
            if (p.host_port, p.protocol) in seen:
                raise Invalid(f"host port {p.host_port}/{p.protocol} is published twice")
            seen.add((p.host_port, p.protocol))
        if len(self.security_groups) > MAX_GROUPS_PER_MACHINE:
            raise Invalid(f"a machine is in at most {MAX_GROUPS_PER_MACHINE} security groups")
        if len(set(self.security_groups)) != len(self.security_groups):
            raise Invalid("a security group is named twice")
        if self.ports and self.networks == (NONE,):
            raise Invalid("published ports need a network: this machine has none (--network)")

    @property
    def none(self) -> bool:
        return self.networks == (NONE,)


class Networks:
    def __init__(self, store: Store, policy: Policy, pool: Pool | None = None) -> None:
        self.store = store
        self.policy = policy
        self.pool = pool or Pool()

    # -- networks -------------------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        project: Project,
        name: str,
        *,
        subnet: str = "",
        subnet6: str = "",
        egress: str = "nat",
        egress_allow: Sequence[str] = (),
    ) -> Network:
        self.policy.require(principal, Action.NETWORK_WRITE, project.id)
        validate_name(name, "network")
        if name == NONE:
            raise Invalid("'none' means no network: choose another name")
        check_egress(egress, egress_allow)
        if subnet:
            check_subnet4(subnet, self.pool.subnet4, ())  # what needs no store, first
        if subnet6:
            check_subnet6(subnet6)
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)  # one project's creates never interleave
            if len(await tx.networks.list(project.id)) >= MAX_NETWORKS_PER_PROJECT:
                raise Conflict(
                    f"project {project.name} has {MAX_NETWORKS_PER_PROJECT} networks already: "
                    "remove one first"
                )
            return await self._create(
                tx, project, name, subnet, subnet6=subnet6, egress=egress,
                egress_allow=tuple(egress_allow),
            )  # fmt: skip

    async def _create(
        self,
        tx: Tx,
        project: Project,
        name: str,
        subnet: str,
        *,
        subnet6: str = "",
        egress: str = "nat",
        egress_allow: tuple[str, ...] = (),
    ) -> Network:
        """In the caller's transaction, which holds the project's lock."""
        ula = await tx.networks.fact(ULA_FACT, new_ula48())
        if subnet or subnet6:
            # Controller-wide, not per project (see IN_USE): every create with a chosen subnet
            # holds the same lock, so two projects' creates cannot both take one subnet.
            await tx.networks.lock_fact(ULA_FACT)
            everyone = await tx.networks.subnets()
            mine = [(n, s4, s6) for p, n, s4, s6 in everyone if p == project.id]
            others = [(s4, s6) for p, _, s4, s6 in everyone if p != project.id]
            if subnet:
                check_subnet4(
                    subnet, self.pool.subnet4, [(n, s4) for n, s4, _ in mine],
                    [s4 for s4, _ in others],
                )  # fmt: skip
            if subnet6:
                subnet6 = str(check_subnet6(
                    subnet6, ula, [(n, s6) for n, _, s6 in mine], [s6 for _, s6 in others]
                ))  # fmt: skip
        for _ in range(CREATE_TRIES):
            taken = await tx.networks.slots()
            slot = lowest_free((s for s, _ in taken), 1, MAX_SLOT)
            if slot is None:
                raise NoCapacity(f"this controller has its {MAX_SLOT} networks already")
            pool4 = None
            subnet4 = subnet
            if not subnet:
                size = pool_size(self.pool.subnet4, self.pool.prefix4)
                pool4 = lowest_free((p for _, p in taken if p is not None), 0, size - 1)
                if pool4 is None:
                    raise NoCapacity(
                        f"the network pool {self.pool.subnet4} has no free "
                        f"/{self.pool.prefix4} left: give the network a --subnet"
                    )
                subnet4 = pool_subnet(self.pool.subnet4, self.pool.prefix4, pool4)
            network = Network(
                id=new_id("net"),
                project_id=project.id,
                name=name,
                subnet4=subnet4,
                subnet6=subnet6 or subnet6_of(ula, slot),
                slot=slot,
                created_at=time.time(),
                pool4=pool4,
                egress=egress,
                egress_allow=egress_allow,
            )
            if await tx.networks.create(network):
                return network
        raise Conflict("too many networks were made at once: retry")

    async def list(self, principal: Principal, project: Project) -> list[tuple[Network, int]]:
        """The project's networks, each with how many machines are on it."""
        async with self._reading(principal, project) as tx:
            networks = await tx.networks.list(project.id)
            counts = await _counts(tx, [n.id for n in networks])
        return [(n, counts.get(n.id, 0)) for n in networks]

    async def get(self, principal: Principal, project: Project, ref: str) -> tuple[Network, int]:
        async with self._reading(principal, project) as tx:
            network = await _network(tx, project, ref)
            return network, (await _counts(tx, [network.id])).get(network.id, 0)

    async def delete(self, principal: Principal, project: Project, ref: str) -> None:
        async with self._writing(principal, project) as tx:
            network = await _network(tx, project, ref)
            with about(f"network {network.name}"):
                await tx.networks.delete(project.id, network.id)

    # -- security groups ------------------------------------------------------------------------

    async def create_group(
        self, principal: Principal, project: Project, name: str, rules: Sequence[Rule] = ()
    ) -> SecurityGroup:
        self.policy.require(principal, Action.NETWORK_WRITE, project.id)
        validate_name(name, "security group")
        if len(rules) > MAX_RULES:
            raise Invalid(f"a security group has at most {MAX_RULES} rules")
        group = SecurityGroup(new_id("sg"), project.id, name, time.time())
        async with self.store.write() as tx:
            await tx.projects.lock(project.id)  # counted and made without interleaving
            if len(await tx.security_groups.list(project.id)) >= MAX_GROUPS_PER_PROJECT:
                raise Conflict(
                    f"project {project.name} has {MAX_GROUPS_PER_PROJECT} security groups "
                    "already: remove one first"
                )
            await tx.security_groups.create(group)
            for rule in rules:
                await self._add_rule(tx, project, group, rule)
            return await tx.security_groups.get(project.id, group.id)

    async def groups(self, principal: Principal, project: Project) -> builtins.list[SecurityGroup]:
        async with self._reading(principal, project) as tx:
            return await tx.security_groups.list(project.id)

    async def group(self, principal: Principal, project: Project, ref: str) -> SecurityGroup:
        async with self._reading(principal, project) as tx:
            return await _group(tx, project, ref)

    async def delete_group(self, principal: Principal, project: Project, ref: str) -> None:
        async with self._writing(principal, project) as tx:
            group = await _group(tx, project, ref)
            with about(f"security group {group.name}"):
                await tx.security_groups.delete(project.id, group.id)
            await _bump_group_nodes(tx, [group.id])

    async def add_rule(
        self, principal: Principal, project: Project, ref: str, rule: Rule
    ) -> tuple[SecurityGroup, str]:
        """The group with the rule added, and the rule's id."""
        async with self._writing(principal, project) as tx:
            group = await _group(tx, project, ref)
            if len(group.rules) >= MAX_RULES:
                raise Conflict(f"security group {group.name} has {MAX_RULES} rules already")
            rule_id = await self._add_rule(tx, project, group, rule)
            await _bump_group_nodes(tx, [group.id])
            return await tx.security_groups.get(project.id, group.id), rule_id

    async def _add_rule(self, tx: Tx, project: Project, group: SecurityGroup, rule: Rule) -> str:
        if rule.remote_group:
            # Another project's group does not exist for this one: NotFound, in its words.
            remote = await _group(tx, project, rule.remote_group)
            rule = Rule(rule.direction, rule.protocol, rule.port_min, rule.port_max, "", remote.id)
        rule_id = new_id("r")
        await tx.security_groups.add_rule(group.id, rule_id, rule, time.time())
        return rule_id

    async def remove_rule(
        self, principal: Principal, project: Project, ref: str, rule_id: str
    ) -> SecurityGroup:
        async with self._writing(principal, project) as tx:
            group = await _group(tx, project, ref)
            try:
                await tx.security_groups.remove_rule(group.id, rule_id)
            except NotFound:
                raise NotFound(f"no rule {rule_id!r} in security group {group.name}") from None
            await _bump_group_nodes(tx, [group.id])
            return await tx.security_groups.get(project.id, group.id)

    # -- machines -------------------------------------------------------------------------------

    async def resolve(self, project: Project, net: MachineNet) -> None:
        """Refuse now (outside the writer) what names networks or groups the project lacks;
        the default network need not exist yet."""
        if not (set(net.networks or ()) - {NONE, DEFAULT} or net.security_groups):
            return  # nothing to read (most creates): no transaction
        async with self.store.read() as tx:
            for ref in net.networks or ():
                if ref not in (NONE, DEFAULT):
                    await _network(tx, project, ref)
            for ref in net.security_groups:
                await _group(tx, project, ref)

    async def join(self, tx: Tx, project: Project, machine_id: str, net: MachineNet) -> "Wiring":
        """In the transaction that creates the machine (holding the project's lock): its
        addresses, published ports and security groups; what it joined, as `wirings` reads it
        back (so a create's answer needs no read of its own)."""
        addresses = []
        if not net.none:
            for position, ref in enumerate(net.networks or (DEFAULT,)):
                network = await self._network_or_default(tx, project, ref)
                address = await tx.networks.assign(network, machine_id, position)
                addresses.append(shown_address(address, network.name))
        await tx.networks.publish(machine_id, net.ports)
        groups = [await _group(tx, project, ref) for ref in net.security_groups]
        await tx.security_groups.attach(machine_id, [g.id for g in groups])
        ports = sorted(net.ports, key=lambda p: (p.host_port, p.protocol))  # as the store's
        return Wiring(tuple(addresses), tuple(ports), tuple(g.name for g in groups))

    def _reading(self, principal: Principal, project: Project) -> AbstractAsyncContextManager[Tx]:
        """A read of the project's networks and groups, once `principal` may read them."""
        self.policy.require(principal, Action.NETWORK_READ, project.id)
        return self.store.read()

    def _writing(self, principal: Principal, project: Project) -> AbstractAsyncContextManager[Tx]:
        """A write of the project's networks and groups, once `principal` may change them."""
        self.policy.require(principal, Action.NETWORK_WRITE, project.id)
        return self.store.write()

    async def _network_or_default(self, tx: Tx, project: Project, ref: str) -> Network:
        try:
            return await _network(tx, project, ref)
        except NotFound:
            if ref != DEFAULT:
                raise
        return await self._create(tx, project, DEFAULT, "")


async def _counts(tx: Tx, network_ids: list[str]) -> dict[str, int]:
    return await tx.networks.counts(network_ids)


async def _network(tx: Tx, project: Project, ref: str) -> Network:
    with missing(f"no network {ref!r} in project {project.name}"):
        return await tx.networks.get(project.id, ref)


async def _group(tx: Tx, project: Project, ref: str) -> SecurityGroup:
    with missing(f"no security group {ref!r} in project {project.name}"):
        return await tx.security_groups.get(project.id, ref)


async def _bump_group_nodes(tx: Tx, group_ids: list[str]) -> None:
    """Rules changed: the nodes running the groups' machines must apply them now."""
    await tx.nodes.bump_revisions(sorted(await tx.security_groups.nodes(group_ids)))


# -- what views and nodes are told ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wiring:
    """A machine's networks as its views show them."""

    addresses: tuple[ShownAddress, ...] = ()  # eth0 first
    ports: tuple[PortMapping, ...] = ()
    security_groups: tuple[str, ...] = ()  # names


async def wirings(tx: Tx, machine_ids: Sequence[str]) -> dict[str, Wiring]:
    return {
        m: Wiring(tuple(w.addresses), tuple(w.ports), tuple(w.security_groups))
        for m, w in (await tx.networks.shown(machine_ids)).items()
    }


@dataclass(frozen=True, slots=True)
class Peer:
    """A machine on a network the node hosts: for its FDB, neighbour entries and DNS."""

    network_id: str
    machine_id: str
    name: str  # NAME.PROJECT.internal and ID.PROJECT.internal resolve to it
    project: str  # the project's name
    mac: str
    ip4: str
    ip6: str
    node_id: str
    underlay: str  # its node's address (host of the agent's URL): the VXLAN's remote


@dataclass(frozen=True, slots=True)
class NodePlan:
    """Everything networks ask of one node, beside its machines' own sandboxes."""

    attachments: dict[str, tuple[Attachment, ...]]  # machine id -> its NICs, eth0 first
    ports: dict[str, tuple[PortMapping, ...]]
    groups: dict[str, tuple[str, ...]]  # machine id -> its security group ids
    rules: dict[str, SecurityGroup]  # the groups those name, and those their rules name
    members: dict[str, tuple[str, ...]]  # group id -> its machines' addresses (remote groups)
    peers: tuple[Peer, ...]
    # Every node's address (IP literals): no machine may reach one (`Assignments.infrastructure`)
    infrastructure: tuple[str, ...] = ()


async def node_plan(tx: Tx, machines: Sequence[Machine]) -> NodePlan:
    """What a node needs to wire its machines (see `NodePlan`)."""
    ids = [m.id for m in machines]
    addresses = await tx.networks.addresses(ids)
    networks = await tx.networks.by_ids(
        sorted({a.network_id for v in addresses.values() for a in v})
    )
    projects = {p: (await tx.projects.get(p)).name for p in {m.project_id for m in machines}}
    attachments = {
        m.id: tuple(
            attachment(networks[a.network_id], a, projects[m.project_id])
            for a in addresses[m.id]
            if a.network_id in networks
        )
        for m in machines
    }
    ports = {m: tuple(p) for m, p in (await tx.networks.ports(ids)).items()}
    groups = {m: tuple(g) for m, g in (await tx.security_groups.of_machines(ids)).items()}
    rules = await tx.security_groups.by_ids(sorted({g for v in groups.values() for g in v}))
    remote = sorted(
        {r.remote_group for sg in rules.values() for _, r in sg.rules if r.remote_group}
    )
    rules.update(await tx.security_groups.by_ids([g for g in remote if g not in rules]))
    members: dict[str, tuple[str, ...]] = {}
    for group_id in remote:
        in_group = await tx.security_groups.machines(group_id)
        found = await tx.networks.addresses(in_group)
        members[group_id] = tuple(x for v in found.values() for a in v for x in (a.ip4, a.ip6))
    peers = []
    underlay: dict[str, str] = {}
    for address, name, project_id, node_id in await tx.networks.peers(sorted(networks)):
        if node_id not in underlay:
            try:
                underlay[node_id] = host_of((await tx.nodes.get(node_id)).address)
            except NotFound:
                underlay[node_id] = ""
        if project_id not in projects:
            projects[project_id] = (await tx.projects.get(project_id)).name
        peers.append(
            Peer(
                address.network_id, address.machine_id, name, projects[project_id], address.mac,
                address.ip4, address.ip6, node_id, underlay[node_id],
            )
        )  # fmt: skip
    nodes = ip_literals(host_of(n.address) for n in await tx.nodes.list())
    return NodePlan(attachments, ports, groups, rules, members, tuple(peers), nodes)


def host_of(url: str) -> str:
    """The host of a node's agent URL: its underlay address."""
    host = urlsplit(url).hostname or ""
    return host


async def bump_neighbours(tx: Tx, machine_ids: Sequence[str]) -> None:
    """Machines came or went: the nodes hosting their networks must update their peers."""
    addresses = await tx.networks.addresses(machine_ids)
    network_ids = sorted({a.network_id for v in addresses.values() for a in v})
    if network_ids:
        nodes = {node for _, _, _, node in await tx.networks.peers(network_ids)}
        await tx.nodes.bump_revisions(sorted(nodes))
