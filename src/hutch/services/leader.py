"""Which controller leads: a lease in the store, held by renewing it.

Any controller serves the API; the one holding the lease also runs the scheduler and the
reconcilers. The holder renews every third of the lease; a controller that cannot renew stops
leading before its lease runs out (its clock, not the store's, decides), and another takes the
lease once it has expired: after a kill -9, within the lease's length plus one renewal period.
"""

import asyncio
import logging
import os
import secrets
import socket
import time

from hutch.services.notify import pause
from hutch.store.base import Store

log = logging.getLogger("hutch.leader")
LEASE = "leader"


class Leadership:
    def __init__(self, store: Store, ttl: float = 5.0, holder: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.holder = holder or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self.term: int | None = None
        self._until = 0.0  # monotonic time up to which this controller leads

    def leading(self) -> bool:
        return time.monotonic() < self._until

    async def renew(self) -> bool:
        """Take or renew the lease once; whether this controller leads now."""
        started = time.monotonic()
        try:
            async with self.store.write() as tx:
                term = await tx.leases.acquire(LEASE, self.holder, self.ttl, time.time())
        except Exception as e:  # the store is down: stop leading in time
            log.warning("cannot renew the leader's lease: %s", e)
            term = None
        was = self.leading()
        # A margin of a fifth of the lease: the others' clocks may run a little ahead.
        self._until = started + 0.8 * self.ttl if term is not None else 0.0
        if term is not None and (not was or term != self.term):
            log.info("leading the controllers (term %d)", term)
        elif term is None and was:
            log.warning("not leading any more")
        self.term = term
        return term is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set, then give the lease up (another takes over at once)."""
        while not stop.is_set():
            await self.renew()
            await pause(stop, self.ttl / 3)
        if self.leading():
            self._until = 0.0
            try:
                async with self.store.write() as tx:
                    await tx.leases.release(LEASE, self.holder)
            except Exception as e:
                log.warning("cannot give the leader's lease up: %s", e)
