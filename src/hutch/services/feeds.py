"""One look at the store per project for all of its event streams.

An event stream waits for its project's next event, and must see those written by other
controllers too, so it polls. Polled by each stream, once a second, 200 streams of one project
made 200 reads a second, each one a step of the event loop that every request shares. Here one
task per project with open streams follows the project's newest event number
(`EventRepo.last`): at once when this process changes the project (the notifier's project key),
otherwise every POLL seconds. The streams wait behind it, and read their own events only when
there is something after what they sent.
"""

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from hutch.model.errors import HutchError
from hutch.services.notify import Notifier, project_key
from hutch.store.base import Store

log = logging.getLogger("hutch.feeds")
POLL = 1.0  # seconds: how stale a stream may be about events written by another controller


@dataclass(eq=False, slots=True)
class Feed:
    """A project's newest event number, as its poll last saw it."""

    latest: int = -1  # -1: not looked at yet
    followers: int = 0
    task: "asyncio.Task[None] | None" = None
    _moved: asyncio.Event = field(default_factory=asyncio.Event)

    async def beyond(self, after: int) -> None:
        """Return once the project has an event numbered after `after`."""
        while self.latest <= after:
            await self._moved.wait()

    def advance(self, latest: int) -> None:
        if latest > self.latest:
            self.latest = latest
            moved, self._moved = self._moved, asyncio.Event()
            moved.set()


class Feeds:
    def __init__(self, store: Store, notifier: Notifier, poll: float = POLL) -> None:
        self.store = store
        self.notifier = notifier
        self.poll = poll
        self._feeds: dict[str, Feed] = {}

    @contextlib.contextmanager
    def follow(self, project_id: str) -> Iterator[Feed]:
        """The project's feed, polled while at least one block follows it."""
        feed = self._feeds.get(project_id)
        if feed is None:
            feed = self._feeds[project_id] = Feed()
            feed.task = asyncio.ensure_future(self._follow(project_id, feed))
        feed.followers += 1
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0:
                del self._feeds[project_id]
                if feed.task is not None:
                    feed.task.cancel()

    async def _follow(self, project_id: str, feed: Feed) -> None:
        while True:
            try:
                async with self.store.read() as tx:
                    feed.advance(await tx.events.last(project_id))
            except HutchError as e:  # the store is away, or the project gone (its streams end)
                log.debug("cannot follow the events of project %s: %s", project_id, e)
            except Exception:  # the poll must go on
                log.exception("following the events of project %s failed", project_id)
            await self.notifier.wait(project_key(project_id), self.poll)
