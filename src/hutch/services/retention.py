"""Retention, on the leading controller: a destroyed machine stays listed (`?all`, `hutch ps -a`)
for `machine_retention`, then its row and its events are purged, a batch a transaction."""

import asyncio
import logging
import time
from collections.abc import Callable

from hutch.services.notify import pause
from hutch.store.base import Store

log = logging.getLogger("hutch.retention")
BATCH = 500  # machines purged per transaction: writers wait no longer than that takes
MAX_PERIOD = 600.0  # seconds between purges, at most


class Retention:
    def __init__(self, store: Store, keep: float) -> None:
        self.store = store
        self.keep = keep  # seconds a destroyed machine stays
        # Purge a few times per retention, so a machine outlives it by a quarter at most.
        self.period = min(MAX_PERIOD, keep / 4)

    async def purge(self) -> int:
        """Purge every machine destroyed more than `keep` ago: how many went."""
        before = time.time() - self.keep
        purged = 0
        while True:
            async with self.store.write() as tx:
                n = await tx.machines.purge(before, BATCH)
            purged += n
            if n < BATCH:
                break
        if purged:
            log.info("purged %d machine(s) destroyed over %.0f s ago", purged, self.keep)
        return purged

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        """Purge every `period` while `leading()`, until `stop` is set."""
        while not stop.is_set():
            if leading():
                try:
                    await self.purge()
                except Exception:
                    log.exception("a purge of destroyed machines failed")
            await pause(stop, self.period)
