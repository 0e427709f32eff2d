"""Request limits: a body larger than 1 MiB is 413, by its Content-Length before it is read,
or as soon as a streamed one passes the limit; a body that does not arrive in time is 408
(`BodyDeadline`); a NUL in the URL is 422 (`NoNul`)."""

import asyncio
import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.http.problems import BodyLate, BodyTooLarge, problem

MAX_BODY = 1 << 20
# Stream through to the nodes (the services bound them); the dashboard's image upload too.
STREAMED = ("/v1/images/import", "/v1/volumes/import", "/ui/images/import")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(STREAMED):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        e = BodyTooLarge(self.limit)
        await problem(e.status_code, e.title, e.detail)(scope, receive, send)


class NoNul:
    """A NUL (%00) in a request's path or query is a 422 naming where, before any route runs:
    no name, reference, label or filter of hutch's holds one, PostgreSQL cannot compare text
    with one, and a route that passed it on would fail deeper (bodies: wire.common.Request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = _nul_in_url(scope) if scope["type"] in ("http", "websocket") else None
        if where is None:
            await self.app(scope, receive, send)
            return
        detail = f"{where}: NUL characters (\\x00) are not allowed"
        if scope["type"] == "websocket":  # refused before the handshake completes
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})
            return
        await problem(422, "Does not match the schema", detail)(scope, receive, send)


def _nul_in_url(scope: Scope) -> str | None:
    if "\0" in scope["path"]:
        return "the path"
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" in query or "\0" in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if "\0" in name:
                return "a query parameter's name"
            if "\0" in value:
                return f"query parameter {name}"
    return None


class BodyDeadline:
    """A request's body must arrive within `timeout` seconds of its first read; a streamed
    one (image imports, which may be large) must not pause for longer than that. Otherwise 408,
    and the connection is closed."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        streamed = scope["path"].startswith(STREAMED)
        deadline: float | None = None
        done = False

        async def timed() -> Message:
            nonlocal deadline, done
            if done:  # the body is in: what is left is waiting for a disconnect
                return await receive()
            now = time.monotonic()
            if deadline is None or streamed:
                deadline = now + self.timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - now))
            except TimeoutError:
                raise BodyLate(self.timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        await self.app(scope, timed, send)
