"""Lifetimes, on the leading controller: a machine run with a timeout (`hutch run --timeout`)
is stopped, suspended or destroyed once it has run that long (`Machines.time_out`; the time it
spent suspended, stopped or starting does not count). The deadline is in the store
(`Machine.expires_at`), so a controller that restarts, or a new leader, acts on it too: at once
if it passed meanwhile.

Idleness too: a machine run with `idle_s` that its node saw no connection to (on its
published ports) for that long is stopped or suspended (`Machines.idle_out`); nodes report
the connections they see (`Machines.activity`), and the time of the last one is in the
store (`Machine.idle_at`)."""

import asyncio
import logging
import time
from collections.abc import Callable

from hutch.services.machines import Machines
from hutch.services.notify import pause

log = logging.getLogger("hutch.lifetimes")
PERIOD = 1.0  # seconds between looks: how late past its timeout a machine may be acted on


class Lifetimes:
    def __init__(self, machines: Machines, period: float = PERIOD) -> None:
        self.machines = machines
        self.period = period

    async def check(self) -> int:
        """One look: how many machines timed out or idled."""
        now = time.time()
        return await self.machines.time_out(now) + await self.machines.idle_out(now)

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        while not stop.is_set():
            if leading():
                try:
                    await self.check()
                except Exception:
                    log.exception("a look for machines that timed out or idled failed")
            await pause(stop, self.period)
