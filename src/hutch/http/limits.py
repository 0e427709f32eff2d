"""Request body limits: a body larger than 1 MiB is 413, by its Content-Length before it is
read, or as soon as a streamed one passes the limit; a body that does not arrive in time is 408
(`BodyDeadline`)."""

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hutch.http.problems import BodyLate, BodyTooLarge, problem

MAX_BODY = 1 << 20
STREAMED = ("/v1/images/import",)  # archives stream through to the nodes


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
