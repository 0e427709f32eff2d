"""Bulk streams take turns, so that a reader of a large log does not stall everyone else.

An event loop runs every ready task once per pass. A stream that always has its next chunk at
hand (a log read from disk, relayed from a node on loopback) is ready on every pass, and five of
them, each relayed twice (node agent, then controller, one loop in `hutch up`), made every other
request wait behind ten chunks of work at each of its own steps: a create took a second.

So the streams of a process share one turn per pass of its loop: a stream waits for `turn()`
before each chunk of work, and the turn passes to the next waiting stream, first come first
served, on the loop's next pass. While nothing else runs, passes are short and streams go at
full speed; while requests run, all the streams together cost them about one chunk per step.
A chunk's work is bounded by whoever produces it (`batched`, the relays' read sizes).
"""

import asyncio
import collections
import weakref
from collections.abc import AsyncIterator

CHUNK = 16 << 10  # bytes of a stream's output worked on in one turn


class Turns:
    """One turn per pass of the loop, for streams in the order they asked."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._taken = False  # a turn was given in this pass

    async def take(self) -> None:
        if not self._taken and not self._waiting:
            self._give()
            return
        future = self._loop.create_future()
        self._waiting.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._next()  # it was given this turn but cannot use it: pass it on
            raise

    def _give(self) -> None:
        self._taken = True
        self._loop.call_soon(self._next)  # the next pass: the turn moves on

    def _next(self) -> None:
        self._taken = False
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._give()
                return


_turns: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Turns]" = weakref.WeakKeyDictionary()


async def turn() -> None:
    """Wait for this loop's next turn for a stream's chunk of work."""
    loop = asyncio.get_running_loop()
    turns = _turns.get(loop)
    if turns is None:
        turns = _turns[loop] = Turns(loop)
    await turns.take()


async def taking_turns(items: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`items`, each one made in a turn of its own."""
    try:
        while True:
            await turn()
            try:
                item = await anext(items)
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def batched(lines: AsyncIterator[bytes], size: int = CHUNK) -> AsyncIterator[bytes]:
    """`lines` joined into chunks of at most about `size` bytes: what is at hand when the
    last chunk has gone. They are made in turns, about `size` bytes a turn (a line's length is
    a fair measure of its cost: a short one's JSON overhead counts), up to `2 * size` ahead."""
    ready: collections.deque[bytes] = collections.deque()
    held = 0  # bytes in `ready`
    wake = asyncio.Event()  # for the reader: lines, or the end
    room = asyncio.Event()  # for the maker: room in `ready`
    end: list[BaseException | None] = []

    async def make() -> None:
        nonlocal held
        try:
            made = size  # bytes made in this turn
            async for line in lines:
                if made >= size:
                    await turn()
                    made = 0
                made += len(line)
                ready.append(line)
                held += len(line)
                wake.set()
                while held >= 2 * size:
                    room.clear()
                    await room.wait()
            end.append(None)
        except Exception as e:  # the reader raises it
            end.append(e)
        finally:
            wake.set()

    maker = asyncio.ensure_future(make())
    try:
        while True:
            await wake.wait()
            wake.clear()
            while ready:
                chunk = bytearray()
                while ready and len(chunk) < size:
                    chunk += ready.popleft()
                held -= len(chunk)
                room.set()
                yield bytes(chunk)
            if end:
                if end[0] is not None:
                    raise end[0]
                return
    finally:
        maker.cancel()
        await asyncio.wait([maker])  # ended (a cancellation of our own still raises)
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            await aclose()
