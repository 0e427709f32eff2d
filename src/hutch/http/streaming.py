"""Long-lived responses (followed logs, event streams), each held by a lease on its caller's
token and project (services/streams.py)."""

import logging
import weakref
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse
from starlette.types import Send

from hutch.model.errors import Unavailable
from hutch.services.streams import Lease, Streams

log = logging.getLogger("hutch.http")


class _Relayed(StreamingResponse):
    """A body relayed from a node that stops answering midway (its agent stopping or
    restarting, as `hutch down` stops it beside the controller) ends cut short, as the node's
    did: its client sees it incomplete, and the log says so in a line, not a traceback."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except Unavailable as e:
            log.warning("a stream ended cut short: %s", e)


def leased(
    streams: Streams,
    lease: Lease,
    body: AsyncIterator[bytes],
    media_type: str,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """`body` as the response; its lease is released when it ends (its own `finally`), or, if
    it never starts (the client went away before), when it is collected."""
    weakref.finalize(body, streams.release, lease)
    return _Relayed(body, media_type=media_type, headers=headers)
