"""Node health, on the leading controller: a node that misses its heartbeats for the grace
becomes unreachable, and its machines are lost (`Machines.lost_with`): those whose restart
policy says so are placed again elsewhere. A node that heartbeats again is ready again."""

import asyncio
import logging
import time
from collections.abc import Callable

from hutch.services.machines import Machines
from hutch.services.nodes import Nodes
from hutch.services.notify import pause

log = logging.getLogger("hutch.health")


class Health:
    def __init__(self, nodes: Nodes, machines: Machines, grace: float) -> None:
        self.nodes = nodes
        self.machines = machines
        self.grace = grace
        self._warned: dict[str, float] = {}  # node id -> the last_seen warned about
        # When this controller began to lead (monotonic): nodes get a whole grace from then,
        # so a controller that was down (or a new leader) does not lose every node at once
        # for heartbeats that had nowhere to go.
        self.leading_since = time.monotonic()

    async def check(self) -> int:
        """One look at every node; how many machines were lost."""
        if time.monotonic() - self.leading_since < self.grace:
            return 0
        lost = 0
        for node in await self.nodes.overdue(time.time() - self.grace):
            if self._warned.get(node.id) != node.last_seen:  # once per time it went away
                log.warning("node %s missed its heartbeats for %.0f s", node.name, self.grace)
                self._warned[node.id] = node.last_seen
            # Unreachable first: a crash in between leaves it so, and the next check (which
            # looks at unreachable nodes too) loses its machines then.
            lost += await self.machines.lost_with(node)
        return lost

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        led = False
        while not stop.is_set():
            if leading() and not led:
                self.leading_since = time.monotonic()
            led = leading()
            if led:
                try:
                    await self.check()
                except Exception:
                    log.exception("a health check failed")
            await pause(stop, min(1.0, self.grace / 5))
