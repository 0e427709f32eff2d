"""In-process wake-ups: waiters sleep on a key until someone changes what it names.

They are an optimisation only: every waiter also polls the store on a short timeout, so a
change made by another controller process is seen within that timeout.
"""

import asyncio
import contextlib

from hutch.model.machine import Desired, Machine

POLL = 0.5  # seconds: how stale a waiter may be about changes made elsewhere


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, *keys: str) -> None:
        for key in keys:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()

    async def wait(self, key: str, timeout: float = POLL) -> None:
        """Return when `key` is notified, or after `timeout` seconds."""
        event = self._events.setdefault(key, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for `seconds`, or until `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


SCHEDULER = "scheduler"  # machines wait for a node
POOLS = "pools"  # a warm pool was changed, or its machines were: services/pools.py tends them


def node_key(node_id: str) -> str:
    return f"node:{node_id}"


def machine_key(machine_id: str) -> str:
    return f"machine:{machine_id}"


def project_key(project_id: str) -> str:
    return f"project:{project_id}"


def keys_of(m: Machine) -> list[str]:
    """Who waits on a change to `m`: its own waiters, its project's event streams, its node's
    long poll, and the scheduler when it waits for a node or has just given a node's share
    back."""
    keys = keys_on(m.id, m.project_id, m.node_id)
    if m.state.finished or (m.node_id is None and m.desired is Desired.RUNNING):
        keys.append(SCHEDULER)
    return keys


def keys_on(machine_id: str, project_id: str, node_id: str | None) -> list[str]:
    """`keys_of` a machine on that node (None: on none), but the scheduler's: those of a
    machine the scheduler has just placed."""
    keys = [machine_key(machine_id), project_key(project_id)]
    if node_id is not None:
        keys.append(node_key(node_id))
    return keys
