"""Event streams of a project share one poll of the store."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from hutch.services.feeds import Feeds
from hutch.services.notify import Notifier, project_key
from hutch.store.base import NewEvent
from hutch.store.sql import SqlStore
from tests.store import factories as f


class Counted(SqlStore):
    """A store that counts its read transactions."""

    reads = 0

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Any]:
        self.reads += 1
        async with super().read() as tx:
            yield tx


async def test_many_streams_of_a_project_share_one_poll(tmp_path: Path) -> None:
    store = Counted(f"sqlite:///{tmp_path / 'hutch.db'}")
    await store.open()
    p = f.project()
    async with store.write() as tx:
        await tx.projects.create(p)
    notifier = Notifier()
    feeds = Feeds(store, notifier, poll=0.1)
    with contextlib.ExitStack() as following:
        followed = [following.enter_context(feeds.follow(p.id)) for _ in range(50)]
        assert len({id(feed) for feed in followed}) == 1
        waiting = [asyncio.ensure_future(feed.beyond(0)) for feed in followed]
        await asyncio.sleep(0.5)
        assert not any(w.done() for w in waiting)
        assert store.reads <= 8  # one poll each 0.1 s, not one per stream

        async with store.write() as tx:  # as another controller would: no one is notified
            await tx.events.append([NewEvent(p.id, "k", "o", "s", "", 0)])
        await asyncio.wait_for(asyncio.gather(*waiting), 2)

        reads = store.reads
    await asyncio.sleep(0.3)
    assert store.reads <= reads + 2  # the poll ended with its last follower

    slow = Feeds(store, notifier, poll=60)  # this process's changes are seen at once
    with slow.follow(p.id) as feed:
        await asyncio.wait_for(feed.beyond(0), 10)  # its first look
        waiting = [asyncio.ensure_future(feed.beyond(1)) for _ in range(10)]
        async with store.write() as tx:
            await tx.events.append([NewEvent(p.id, "k", "o", "s", "", 0)])
        notifier.notify(project_key(p.id))
        await asyncio.wait_for(asyncio.gather(*waiting), 10)
        assert feed.latest == 2
    with feeds.follow(p.id) as again:  # and starts anew
        await asyncio.wait_for(again.beyond(1), 2)
    await store.close()
