"""Slow and greedy clients: a deadline for a request's headers, and a cap on the connections one
client address holds open. (A deadline for bodies: `limits.BodyDeadline`.)

uvicorn reads headers for as long as a client cares to send them, and takes every connection;
`guarded_http` is its HTTP/1.1 protocol (h11) with both limits, given to uvicorn.Config(http=).
"""

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REFUSED = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 36\r\n\r\ntoo many connections from this host\n"
)
LATE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 32\r\n\r\nthe request's headers came late\n"
)


def guarded_http(header_timeout: float, connections_per_client: int) -> type[H11Protocol]:
    """The protocol class: a request's headers must arrive within `header_timeout` seconds of
    its first byte (of the connection, for its first request), and one client address holds
    at most `connections_per_client` connections (429 and closed beyond)."""
    held: dict[str, int] = {}

    class Guarded(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _holder: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else ""
            if held.get(host, 0) >= connections_per_client:
                transport.write(REFUSED)
                transport.close()
                return
            held[host] = held.get(host, 0) + 1
            self._holder = host
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._release()
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                if self._timer is None and not self.transport.is_closing():
                    self._arm()  # a new request has begun
            else:
                self._disarm()  # its headers are in

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._disarm()
            super().handle_websocket_upgrade(event)
            ws: Any = self.transport.get_protocol()
            lost = ws.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                self._release()
                lost(exc)

            ws.connection_lost = connection_lost

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle between requests: uvicorn's keep-alive timeout

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(header_timeout, self._late)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _release(self) -> None:
            if self._holder is not None:
                left = held.get(self._holder, 1) - 1
                if left > 0:
                    held[self._holder] = left
                else:
                    held.pop(self._holder, None)
                self._holder = None

        def _late(self) -> None:
            self._timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self.cycle is None or self.cycle.response_complete:
                    self.transport.write(LATE)
                self.transport.close()

    return Guarded
