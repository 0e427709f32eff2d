"""Registry fixtures: a real docker-registry (and token server, proxy) per module or per test.

    registry                  module-scoped anonymous Registry: .host, .push(layout, ref, "repo:t")
    make_registry(**options)  a fresh, started Registry (htpasswd={...}, token=..., tls=True)
    make_token_server(users)  a started TokenServer, to pass as make_registry(token=...)
    make_proxy(registry)      a CountingProxy in front of it: .host, .requests, .cut_after(...)
    scripted                  a ScriptedServer: .host, .routes[path] = fn(headers) -> reply

All are stopped at the end of their scope.
"""

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from tests.images.registry_server import CountingProxy, Registry, ScriptedServer, TokenServer


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture
def make_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Registry]]:
    started: list[Registry] = []

    def make(**options: Any) -> Registry:
        reg = Registry(tmp_path_factory.mktemp("registry"), **options)
        started.append(reg)
        return reg.start()

    yield make
    for reg in started:
        reg.stop()


@pytest.fixture
def make_token_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., TokenServer]]:
    started: list[TokenServer] = []

    def make(users: Mapping[str, str], **options: Any) -> TokenServer:
        server = TokenServer(tmp_path_factory.mktemp("tokens"), users, **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_proxy() -> Iterator[Callable[[Registry], CountingProxy]]:
    started: list[CountingProxy] = []

    def make(registry: Registry) -> CountingProxy:
        proxy = CountingProxy(registry.port)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.stop()
