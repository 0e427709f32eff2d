"""Long-lived responses (followed logs, event streams), each held by a lease on its caller's
token and project (services/streams.py)."""

import weakref
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from hutch.services.streams import Lease, Streams


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
    return StreamingResponse(body, media_type=media_type, headers=headers)
