"""Where a node may connect for images: an allow-list of registries, and a check of every address.

Tenants name registries in image references, so without a check a member could make the node
connect anywhere it can reach (its own services, the cloud's metadata endpoint) and learn from
the errors what answered. Two checks stop that:

- by name, before any connection: a reference's registry (host[:port]) must be in
  `registry_allow` or configured under `registries` (with its mirrors); anything else is
  Forbidden with one message whatever listens there (`RegistryNames`);
- by address, at every connection (redirects to blob storage and token servers included): the
  name is resolved here, every address is checked, and the connection goes to a checked
  address, so DNS that answers differently the second time (rebinding) gains nothing.
  Loopback, link-local, unspecified, multicast, reserved and this host's own addresses are
  refused (`forbidden_reason`), except for destinations the operator configured
  (`registries` and their mirrors: `trusted_destinations`), which are trusted as listed.

Only the connection's address changes: the URL, Host header and TLS name stay the name, so
certificates are verified as usual. Through an HTTP(S) proxy from the environment the proxy
makes the connections, so the address check is its job; the name check still holds.
"""

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from hutch.model.errors import Forbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host" on Linux, like 0.0.0.0
_FIB_TRIE = Path("/proc/net/fib_trie")
_IF_INET6 = Path("/proc/net/if_inet6")


@dataclass(frozen=True, slots=True)
class RegistryNames:
    """The registries (host[:port], as in `ImageRef.registry`) image references may name."""

    names: frozenset[str]

    @classmethod
    def of(cls, allow: Iterable[str], registries: Mapping[str, Iterable[str]]) -> "RegistryNames":
        """`allow` (the registry_allow setting) plus each configured registry (host -> mirrors)
        and each mirror's host[:port]."""
        names = {name.lower() for name in allow}
        for host, mirrors in registries.items():
            names.add(host.lower())
            names.update(urlsplit(m).netloc.lower() for m in mirrors)
        return cls(frozenset(n for n in names if n))

    def allowed(self, registry: str) -> bool:
        return registry.lower() in self.names

    def check(self, registry: str) -> None:
        """Forbidden unless `registry` may be named. Decided without any connection, so the
        answer is the same whether or not something listens there."""
        if not self.allowed(registry):
            raise Forbidden(
                f"registry {registry} is not allowed: nodes pull only from the registries "
                "the operator allows (settings registry_allow and registries)"
            )


def trusted_destinations(bases: Iterable[str]) -> frozenset[tuple[str, int]]:
    """(host, port) of each base URL ("https://host[:port]"): the configured registries and
    mirrors, connected to whatever their addresses."""
    out = set()
    for base in bases:
        parts = urlsplit(base)
        if parts.hostname:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            out.add((parts.hostname.lower(), port))
    return frozenset(out)


def forbidden_reason(address: IPAddress, own: Collection[IPAddress] = ()) -> str | None:
    """Why the node must not connect to `address` for a tenant, or None if it may.
    An IPv4 address written as IPv6 (::ffff:127.0.0.1) is judged as the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved or address == ipaddress.IPv4Address("255.255.255.255"):
        return "a reserved address"
    if address in own:
        return "an address of this node"
    return None


def own_addresses() -> frozenset[IPAddress]:
    """The addresses of this host's interfaces (in its network namespace), IPv4 and IPv6."""
    found: set[IPAddress] = set()
    try:  # the local routes of the FIB: "|-- 10.0.2.15" followed by "/32 host LOCAL"
        last = ""
        for line in _FIB_TRIE.read_text().splitlines():
            text = line.strip()
            if text.startswith("|-- "):
                last = text[4:]
            elif text.startswith("/32 host LOCAL") and last:
                found.add(ipaddress.IPv4Address(last))
    except (OSError, ValueError):
        pass
    try:  # one address per line, 32 hex digits first
        for line in _IF_INET6.read_text().splitlines():
            fields = line.split()
            if fields and len(fields[0]) == 32:
                found.add(ipaddress.IPv6Address(int(fields[0], 16)))
    except (OSError, ValueError):
        pass
    try:  # and whatever the host's name resolves to (e.g. an address only /etc/hosts knows)
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(str(info[4][0]).partition("%")[0]))
    except (OSError, ValueError):
        pass
    return frozenset(found)


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, resolving names itself and connecting only to addresses
    `forbidden_reason` lets through (all of them for `trusted` destinations)."""

    def __init__(self, trusted: Collection[tuple[str, int]]) -> None:
        self._trusted = trusted
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if (host.lower(), port) in self._trusted:
            return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        addresses = await _resolve(host, port, timeout)
        own = own_addresses()
        allowed = [a for a in addresses if forbidden_reason(a, own) is None]
        if not allowed:
            reason = forbidden_reason(addresses[0], own)
            raise Forbidden(
                f"{host}:{port} is {reason}: nodes connect there for images only when the "
                f'operator configures it (registries."{_netloc(host, port)}")'
            )
        error: Exception | None = None
        for address in allowed:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                error = e
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("registries are reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _resolve(host: str, port: int, timeout: float | None) -> list[IPAddress]:
    try:
        literal = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        pass
    else:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
    except OSError as e:
        raise httpcore.ConnectError(f"cannot resolve {host}: {e}") from None
    out: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if address not in out:
            out.append(address)
    if not out:
        raise httpcore.ConnectError(f"cannot resolve {host}")
    return out


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a `CheckedBackend`: what a registry client connects through."""

    def __init__(self, verify: ssl.SSLContext, trusted: Collection[tuple[str, int]]) -> None:
        super().__init__(verify=verify)
        # httpx builds its pool without a way to pass a network backend: the same pool,
        # rebuilt with ours (httpx's defaults otherwise).
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(trusted),
        )
