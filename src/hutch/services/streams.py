"""Long-lived streams and the credentials they were opened with.

A request is authorised when it starts, but an event stream, a followed log or an exec session
lives on. Each registers here (`Streams.open`) with its caller's token and project, and ends as
soon as the token is revoked or expires or the project is deleted:
- revocations and deletions made through this controller end its streams at once
  (`end_token`, `end_project`, called by the tenancy service after its commit);
- those made through another controller sharing the store are found by `run`: every CHECK
  seconds one statement re-checks the tokens and projects of all the streams open here;
- a token's expiry is known when the stream opens: it ends then.
A stream checks its lease before it sends anything (`Lease.guard`), so nothing written after a
revocation seen here, or after the expiry, reaches it.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from hutch.model.errors import HutchError, TooManyRequests
from hutch.model.tenancy import Principal, Project
from hutch.services.notify import pause
from hutch.store.base import Store

log = logging.getLogger("hutch.streams")
CHECK = 0.5  # seconds between two checks of every open stream's token and project
PER_TOKEN = 32  # streams one token may hold open at once
T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Lease:
    """One open stream's hold on its caller's token and project."""

    token_id: str
    project_id: str
    expires_at: float | None  # the token's expiry (unix time), if it has one
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""  # why it ended

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()

    @property
    def live(self) -> bool:
        """Not ended (checked now against the expiry too: no query)."""
        if self.expires_at is not None and time.time() >= self.expires_at:
            self.end("this token has expired")
        return not self.ended.is_set()

    async def wait(self) -> None:
        """Return when the lease ends (revoked, expired, project deleted)."""
        while self.live:
            timeout = None if self.expires_at is None else max(0.0, self.expires_at - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), timeout)

    async def guard(
        self, items: AsyncIterator[T], keepalive: float | None = None
    ) -> AsyncIterator[T | None]:
        """`items` while the lease holds, and None after `keepalive` seconds without an item;
        ends with `items` or with the lease (closing `items`).

        Items are read in the caller's task, at no cost per item but a look at the lease: a
        watcher interrupts only a wait for the next item when the lease ends meanwhile. With
        `keepalive`, each read is a task of its own that goes on across keepalives (a read cut
        short by one would end `items`, an async generator, for good)."""
        task = asyncio.current_task()
        assert task is not None
        waiting = interrupted = False
        pending: asyncio.Task[T] | None = None  # the read a keepalive came before

        def interrupt(watch: asyncio.Future[None]) -> None:
            nonlocal interrupted
            if waiting and not watch.cancelled():
                interrupted = True
                task.cancel()

        watcher = asyncio.ensure_future(self.wait())
        watcher.add_done_callback(interrupt)
        try:
            while self.live:
                waiting = True
                try:
                    item: T | None
                    if keepalive is None:
                        item = await anext(items)
                    else:
                        pending = pending or asyncio.ensure_future(_next(items))
                        done, _ = await asyncio.wait([pending], timeout=keepalive)
                        item, pending = (pending.result(), None) if done else (None, pending)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not interrupted:
                        raise
                    task.uncancel()
                    return
                finally:
                    waiting = False
                if not self.live:
                    return
                yield item
        finally:
            watcher.remove_done_callback(interrupt)
            watcher.cancel()
            if pending is not None:
                pending.cancel()
                await asyncio.wait([pending])  # `items` is not running when it is closed
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


async def _next(items: AsyncIterator[T]) -> T:
    return await anext(items)


class Streams:
    def __init__(self, store: Store, interval: float = CHECK, per_token: int = PER_TOKEN) -> None:
        self.store = store
        self.interval = interval
        self.per_token = per_token
        self._open: set[Lease] = set()
        self._held: dict[str, int] = {}  # open leases per token

    def admit(self, caller: Principal, project: Project) -> Lease:
        """A lease for a stream that `caller` opens in `project`, held until `release`;
        TooManyRequests if its token holds `per_token` already (on this controller)."""
        held = self._held.get(caller.token_id, 0)
        if held >= self.per_token:
            raise TooManyRequests(
                f"this token already has {held} streams open (logs, exec, events), the most "
                f"one token may hold (streams_per_token): close one, or use another token"
            )
        lease = Lease(caller.token_id, project.id, caller.expires_at)
        self._open.add(lease)
        self._held[caller.token_id] = held + 1
        return lease

    def release(self, lease: Lease) -> None:
        """The stream has ended (again: nothing)."""
        if lease in self._open:
            self._open.discard(lease)
            left = self._held.get(lease.token_id, 1) - 1
            if left > 0:
                self._held[lease.token_id] = left
            else:
                self._held.pop(lease.token_id, None)

    @contextlib.contextmanager
    def open(self, caller: Principal, project: Project) -> Iterator[Lease]:
        """`admit`, released when the block ends."""
        lease = self.admit(caller, project)
        try:
            yield lease
        finally:
            self.release(lease)

    def end_token(self, token_id: str, reason: str) -> None:
        for lease in list(self._open):
            if lease.token_id == token_id:
                lease.end(reason)

    def end_project(self, project_id: str, reason: str) -> None:
        for lease in list(self._open):
            if lease.project_id == project_id:
                lease.end(reason)

    async def check(self) -> None:
        """One look at the store for every open stream; end those no longer allowed."""
        leases = [lease for lease in self._open if lease.live]
        if not leases:
            return
        async with self.store.read() as tx:
            tokens, projects = await tx.tokens.usable(
                sorted({lease.token_id for lease in leases}),
                sorted({lease.project_id for lease in leases}),
                time.time(),
            )
        for lease in leases:
            if lease.project_id not in projects:
                lease.end("the project was deleted")
            elif lease.token_id not in tokens:
                lease.end("this token was revoked or has expired")

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `interval` seconds until `stop` is set (on every controller)."""
        while not stop.is_set():
            await pause(stop, self.interval)
            try:
                await self.check()
            except HutchError as e:  # the store is away: streams stay until it answers
                log.warning("cannot check open streams: %s", e)
            except Exception:  # the check must go on
                log.exception("checking open streams failed")
