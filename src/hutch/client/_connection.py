"""What `Client` and `AsyncClient` share besides the plans (`_core`): resolving where and as
whom they talk, holding the httpx client, and mapping transport failures to the SDK's errors.
Each subclass only says which httpx client it drives and how (blocking or awaited)."""

import contextlib
from collections.abc import Iterator
from typing import ClassVar, Generic, TypeVar

import httpx

from hutch.client._calls import Endpoint
from hutch.client.config import resolve

H = TypeVar("H", httpx.Client, httpx.AsyncClient)
C = TypeVar("C")


class Connection(Generic[H]):
    """A connection to a controller over an `H` (httpx.Client or httpx.AsyncClient)."""

    _transport: ClassVar[type[httpx.Client] | type[httpx.AsyncClient]]

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        project: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        context = resolve(url, token, project)
        self._endpoint = Endpoint(context.url, context.token, context.project, timeout)
        self._http: H = self._transport(  # type: ignore[assignment]
            base_url=context.url, headers=self._endpoint.headers, timeout=timeout
        )
        self._mount()

    def _mount(self) -> None:
        """Make the client's resources (`client.machines`, ...)."""

    @property
    def url(self) -> str:
        return self._endpoint.url

    @property
    def project(self) -> str | None:
        return self._endpoint.project

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, project={self.project!r})"

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Transport failures inside as `Unavailable` (`NoConnection` when never connected)."""
        try:
            yield
        except httpx.TransportError as e:
            raise self._endpoint.unreachable(e) from None


class Resource(Generic[C]):
    """A part of a client's API (`client.machines`, ...), acting through the client `C`."""

    def __init__(self, client: C) -> None:
        self._c = client
