"""Nodes: agents join with the join secret, get a credential of their own, heartbeat, and
long-poll what their machines should be doing."""

import hmac
import time
from collections.abc import Mapping
from dataclasses import replace

from hutch.model.addressing import ip_literals
from hutch.model.errors import Conflict, Invalid, NotFound, Unauthenticated
from hutch.model.machine import Capacity, Machine, Node, NodeState
from hutch.model.tenancy import Principal, Quota, validate_name
from hutch.services.ids import hash_secret, new_id, new_secret
from hutch.services.networks import NodePlan, node_plan
from hutch.services.nodelink import controller_key
from hutch.services.notify import POLL, POOLS, SCHEDULER, Notifier, node_key
from hutch.services.policy import Policy
from hutch.services.refusals import missing
from hutch.store.base import Store, Tx
from hutch.wire.nodes import JoinToken

MAX_POLL = 60.0
JOIN_TTL_MAX = 24 * 3600.0


class Nodes:
    def __init__(
        self,
        store: Store,
        notifier: Notifier,
        join_secret: str,
        controller_secret: bytes,
        ca_pin: str = "",
        *,
        addresses: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.notifier = notifier
        self._join_secret = join_secret
        self._controller_secret = controller_secret
        self.ca_pin = ca_pin  # the CA's hash when the controller serves HTTPS
        # This controller's own addresses, as far as its settings say (IP literals): every
        # node blocks them to its machines, with every node's address.
        self.addresses = ip_literals(addresses)
        # Every committed bump of a node's revision (a rule changed, a machine placed on a
        # network the node hosts, ...) ends that node's long poll at once, whoever made it.
        store.watch_revisions(lambda ids: notifier.notify(*map(node_key, sorted(ids))))

    def join_token(self, principal: Principal, ttl: float) -> JoinToken:
        """A token that lets agents join until it expires (signed, so nothing is stored: any
        controller sharing the controller secret accepts it), with the CA pin when there is
        one."""
        Policy.require_system(principal, "see or change nodes")
        if not 0 < ttl <= JOIN_TTL_MAX:
            raise Invalid(f"a join token lives between 1 s and {JOIN_TTL_MAX:.0f} s")
        return JoinToken.issue(self._controller_secret, int(time.time() + ttl), self.ca_pin)

    def _may_join(self, presented: str) -> None:
        if self._join_secret and hmac.compare_digest(presented, self._join_secret):
            return
        try:
            token = JoinToken.parse(presented)
        except Invalid:
            token = None
        if token is not None and token.signed_by(self._controller_secret):
            if token.expires < time.time():
                raise Unauthenticated("the join token has expired: make another")
            return
        raise Unauthenticated("the join token (or secret) is wrong")

    async def register(
        self,
        join_secret: str,
        *,
        name: str,
        address: str,
        runtimes: list[str],
        accel: str,
        capacity: Capacity,
        overhead_mib: Mapping[str, int],
        labels: Mapping[str, str],
        domain: str = "",
    ) -> tuple[Node, str, str]:
        """A new node, its credential and the key the controller will present to it."""
        self._may_join(join_secret)
        now = time.time()
        node = Node(
            id=new_id("n"),
            name=validate_name(name, "node"),
            address=address,
            runtimes=tuple(runtimes),
            accel=accel,
            capacity=capacity,
            allocated=Capacity(0, 0, 0),
            overhead_mib=dict(overhead_mib),
            labels=dict(labels),
            state=NodeState.READY,
            created_at=now,
            last_seen=now,
            domain=domain,
        )
        credential = new_secret()
        async with self.store.write() as tx:
            try:
                await tx.nodes.create(node, hash_secret(credential))
            except Conflict:
                raise Conflict(
                    f"a node named {name!r} is already registered: its agent must use its saved "
                    "credential (or remove the node first)"
                ) from None
            await _bump_all(tx)  # every node blocks the new one's address to its machines
        return node, credential, controller_key(self._controller_secret, node.id)

    async def authenticate(self, credential: str | None) -> Node:
        if not credential:
            raise Unauthenticated("no node credential: send 'Authorization: Bearer <credential>'")
        async with self.store.read() as tx:
            node = await tx.nodes.by_credential(hash_secret(credential))
        if node is None:
            raise Unauthenticated("unknown node credential")
        return node

    async def heartbeat(self, node: Node, address: str) -> Node:
        """The node is alive, and reachable at `address` (an agent may move to a new port)."""
        async with self.store.write() as tx:
            fresh = await tx.nodes.lock(node.id)
            state = NodeState.READY if fresh.state is NodeState.UNREACHABLE else fresh.state
            if fresh.state is NodeState.UNREACHABLE:
                # Back: its agent drops the sandboxes that are no longer its own, so the
                # addresses of the machines lost with it may go to others now.
                await tx.networks.fenced(node.id)
            if address != fresh.address:  # the nodes block its new address
                await _bump_all(tx)
            return await tx.nodes.update(
                replace(fresh, last_seen=time.time(), state=state, address=address)
            )

    async def assignments(
        self, node: Node, after: int, wait: float, reached_at: str = ""
    ) -> tuple[int, list[tuple[Machine, Quota]], NodePlan]:
        """The node's machines, each with its project's quota (what an image it pulls for one
        may take), and what its networks need, once its revision is past `after`, or after
        `wait` seconds. The plan's infrastructure: every node's address, this controller's
        and `reached_at` (the address the agent's request came in at: the controller's, even
        when it listens on every address)."""
        deadline = time.monotonic() + min(max(wait, 0.0), MAX_POLL)
        while True:
            async with self.store.read() as tx:
                revision = await tx.nodes.revision(node.id)
                if revision > after or time.monotonic() >= deadline:
                    machines = await tx.machines.on_node(node.id)
                    quotas = {
                        p: (await tx.projects.get(p)).quota
                        for p in {m.project_id for m in machines}
                    }
                    plan = await node_plan(tx, machines)
                    ours = (*plan.infrastructure, *self.addresses, reached_at)
                    plan = replace(plan, infrastructure=ip_literals(ours))
                    return revision, [(m, quotas[m.project_id]) for m in machines], plan
            await self.notifier.wait(node_key(node.id), min(deadline - time.monotonic(), POLL))

    async def overdue(self, cutoff: float) -> list[Node]:
        """Nodes last seen before `cutoff` become unreachable; every unreachable node. A look
        that finds every node well takes no write."""
        async with self.store.read() as tx:
            nodes = await tx.nodes.list()
        late = [n for n in nodes if n.state is NodeState.READY and n.last_seen < cutoff]
        unreachable = [n for n in nodes if n.state is NodeState.UNREACHABLE]
        if late:
            async with self.store.write() as tx:
                for node in late:
                    try:
                        unreachable.append(
                            await tx.nodes.update(replace(node, state=NodeState.UNREACHABLE))
                        )
                    except Conflict:  # it heartbeat meanwhile (compare-and-set)
                        continue
        return unreachable

    async def listing(self, principal: Principal) -> list[Node]:
        Policy.require_system(principal, "see or change nodes")
        async with self.store.read() as tx:
            return await tx.nodes.list()

    async def find(self, principal: Principal, ref: str) -> Node:
        """A node by name or id."""
        Policy.require_system(principal, "see or change nodes")
        async with self.store.read() as tx:
            return _named(await tx.nodes.list(), ref)

    async def machines(self, principal: Principal, ref: str) -> tuple[Node, list[Machine]]:
        """A node by name or id, and the machines placed on it (every project's)."""
        Policy.require_system(principal, "see or change nodes")
        async with self.store.read() as tx:
            node = _named(await tx.nodes.list(), ref)
            return node, await tx.machines.on_node(node.id)

    async def cordon(self, principal: Principal, ref: str, cordoned: bool) -> Node:
        """A cordoned node keeps what it runs and takes nothing new."""
        Policy.require_system(principal, "see or change nodes")
        async with self.store.write() as tx:
            node = _named(await tx.nodes.list(), ref)
            node = await tx.nodes.lock(node.id)
            if node.cordoned != cordoned:
                node = await tx.nodes.update(replace(node, cordoned=cordoned))
        self.notifier.notify(SCHEDULER, POOLS)  # machines may wait for it, pools refill on it
        return node

    async def remove(self, principal: Principal, ref: str) -> Node:
        """Forget a node that runs nothing (drain it first); its credential stops working."""
        Policy.require_system(principal, "see or change nodes")
        async with self.store.write() as tx:
            node = _named(await tx.nodes.list(), ref)
            await tx.nodes.delete(node.id)
            await tx.networks.fenced(node.id)  # gone: what it lost cannot run there any more
            await _bump_all(tx)  # its address is no longer the cluster's
        self.notifier.notify(node_key(node.id))
        return node

    async def ready(self) -> list[Node]:
        async with self.store.read() as tx:
            return [n for n in await tx.nodes.list() if n.state is NodeState.READY]

    async def get(self, node_id: str) -> Node:
        async with self.store.read() as tx:
            with missing(f"no node {node_id}"):
                return await tx.nodes.get(node_id)


async def _bump_all(tx: Tx) -> None:
    """A node came, went or moved: every node's agent must see the cluster's addresses anew."""
    await tx.nodes.bump_revisions([n.id for n in await tx.nodes.list()])


def _named(nodes: list[Node], ref: str) -> Node:
    for node in nodes:
        if ref in (node.id, node.name):
            return node
    raise NotFound(f"no node {ref!r}")
