"""A client for OCI distribution registries: manifests and blobs, as a pull needs them.

Authentication follows the distribution token spec: every request goes out anonymously (or
with what an earlier challenge taught us), and a 401 says how to authenticate: `Basic` (send the
configured credentials) or `Bearer` (ask the named token server for a token for the scope,
cache it until it expires, send it). Each request is retried at most once per challenge, so
wrong credentials end in a clear error rather than a loop.

Mirrors are tried in order before the registry itself, for every manifest and blob, and any
failure of a mirror (unreachable, 404, corrupt) falls back to the next. Credentials are only
ever sent to the registry they are configured for (and its token server), never to a mirror.

Tenants choose the registry, so every connection goes through `egress`: a registry that is
neither allowed (`allow`) nor configured is refused before any connection, and every address
connected to (redirects and token servers included) is checked there.

Blob downloads resume: whatever the destination file already holds is kept and the rest is
asked for with a Range request. They are not verified here; `ImageStore.commit_partial` does that.
"""

import asyncio
import base64
import hashlib
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar
from urllib.parse import urlsplit

import httpx

from hutch.images.egress import CheckedTransport, RegistryNames, trusted_destinations
from hutch.images.layout import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_JSON_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_json_object,
)
from hutch.model.errors import HutchError, Invalid, NotFound, Unavailable, Unsupported
from hutch.model.image import ImageRef, digest_hex

DOCKER_HUB = "docker.io"
DOCKER_HUB_URL = "https://registry-1.docker.io"  # where docker.io's registry API is served
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
_SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
_CHUNK = 1 << 16
_MAX_TOKEN_BYTES = 1 << 20  # a token response is a JWT or two: far smaller than this
_MAX_ERROR_BYTES = 64 << 10  # of an error body, enough for the registry's JSON message
_TOKEN_LIFETIME = 60  # seconds, when the token server does not say (the spec's default)
_TOKEN_MARGIN = 5  # seconds: a token this close to expiry is not sent again
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # RFC 7230 token
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_BARE = re.compile(r"[^\s,]*")
_T = TypeVar("_T")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """How to reach one registry (keyed by its host, as in `ImageRef.registry`)."""

    mirrors: tuple[str, ...] = ()  # base URLs tried in order before the registry, for pulls
    insecure: bool = False  # plain HTTP to this registry
    ca_file: Path | None = None  # extra PEM CA certificates to trust for it (and its mirrors)
    username: str = ""
    password: str = ""


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest or index document exactly as the registry sent it."""

    data: bytes
    media_type: str  # the document's mediaType, else the response's Content-Type
    digest: str  # sha256 of `data`; equal to the digest asked for, when one was


def base_url(registry: str, config: RegistryConfig) -> str:
    """The URL the registry API of `registry` (a host[:port]) is served under."""
    if registry == DOCKER_HUB:
        return DOCKER_HUB_URL
    return f"{'http' if config.insecure else 'https'}://{registry}"


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """One place to pull from: the registry itself or one of its mirrors."""

    registry: str  # the registry host the request is for (its config applies)
    base: str  # "https://registry-1.docker.io", "http://127.0.0.1:5001"
    name: str  # for messages and the auth caches: the registry host, or the mirror's URL
    username: str  # empty for mirrors: credentials only go where they were configured
    password: str
    mirror: bool


@dataclass(frozen=True, slots=True)
class _Challenge:
    scheme: str  # lowercased: "basic", "bearer"
    params: dict[str, str]  # parameter names lowercased: realm, service, scope, error


class RegistryClient:
    """Talks to registries for pulls. Use as an async context manager, or call `close()`.

    `timeout` bounds each network operation (connecting, each read, each write), not a whole
    download, so a large layer on a slow link is fine as long as bytes keep arriving.
    """

    def __init__(
        self,
        registries: Mapping[str, RegistryConfig] | None = None,
        *,
        allow: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> None:
        """`registries` are the configured ones (trusted at any address, as are their mirrors);
        `allow` names the other registries references may name (see `hutch.images.egress`)."""
        self._configs = dict(registries or {})
        for host, config in self._configs.items():
            for mirror in config.mirrors:
                _check_mirror(host, mirror)
        self._names = RegistryNames.of(
            allow, {host: config.mirrors for host, config in self._configs.items()}
        )
        self._trusted = trusted_destinations(
            [base_url(host, c) for host, c in self._configs.items()]
            + [m for c in self._configs.values() for m in c.mirrors]
        )
        self._timeout = httpx.Timeout(timeout)
        self._http: dict[str, httpx.AsyncClient] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (endpoint, scope)
        self._scopes: dict[tuple[str, str], str] = {}  # (endpoint, repository) -> its scope
        self._token_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._basic: set[str] = set()  # endpoints that asked for Basic auth

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._http = list(self._http.values()), {}
        for client in clients:
            await client.aclose()

    # -- the API ----------------------------------------------------------------------------------

    async def manifest(self, ref: ImageRef, digest: str | None = None) -> Manifest:
        """The manifest or index `ref` names (or, with `digest`, the one with that digest).

        Raises NotFound if the registry does not have it, Unsupported for Docker schema 1,
        Invalid if it is too large or does not match `digest`, Unavailable if unreachable.
        """
        if digest is not None:
            digest_hex(digest)
        return await self._from_endpoints(
            ref.registry, lambda ep: self._manifest(ep, ref, digest), what=f"manifest of {ref}"
        )

    async def fetch_blob(
        self,
        ref: ImageRef,
        digest: str,
        size: int,
        dest: Path,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        """Download blob `digest` of `size` bytes from `ref`'s repository into `dest`.

        What `dest` already holds is kept and only the rest is requested (Range); a registry
        that ignores the range makes the download start over. After a successful return
        `dest` holds exactly `size` bytes, not yet verified. On failure `dest` keeps what
        arrived, never more than `size` bytes, and the next call resumes from there; a lost
        connection raises Unavailable saying so. `on_bytes` is called with the number of
        bytes `dest` holds as they arrive (it can go down when a download starts over).
        """
        digest_hex(digest)
        if size < 0:
            raise Invalid(f"blob {digest} has a negative size")

        async def attempt(ep: _Endpoint) -> None:
            await self._fetch_blob(ep, ref, digest, size, dest, on_bytes=on_bytes)

        await self._from_endpoints(ref.registry, attempt, what=f"layer {digest}")

    async def read_blob(self, ref: ImageRef, digest: str, size: int) -> bytes:
        """A small blob (an image config) in memory, checked against `digest` and `size`."""
        digest_hex(digest)

        async def attempt(ep: _Endpoint) -> bytes:
            return await self._read_blob(ep, ref, digest, size)

        return await self._from_endpoints(ref.registry, attempt, what=f"blob {digest}")

    # -- one endpoint -----------------------------------------------------------------------------

    async def _manifest(self, ep: _Endpoint, ref: ImageRef, digest: str | None) -> Manifest:
        reference = digest or ref.reference
        what = f"manifest {reference} of {ref.name}"
        response = await self._get(ep, ref, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT})
        try:
            if response.status_code == 404:
                if digest is not None and digest != ref.digest:
                    raise NotFound(
                        f"manifest {digest} of image {ref} not found in registry {ep.name}"
                    )
                raise NotFound(f"image {ref} not found in registry {ep.name}")
            if response.status_code != 200:
                raise await _status_error(ep, ref, response, what)
            data = await _read_capped(ep, response, MAX_JSON_BYTES, what)
        finally:
            await response.aclose()
        actual = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if digest is not None and actual != digest:
            raise Invalid(
                f"registry {ep.name} sent a manifest for {digest} whose digest is {actual}: "
                "the registry is corrupt or not the one you meant"
            )
        doc = parse_json_object(data, f"{what} from registry {ep.name}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        media_type = doc.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            media_type = content_type
        if media_type in _SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
            raise Unsupported(
                f"image {ref} in registry {ep.name} has a Docker schema 1 manifest, which is "
                "obsolete and not supported: push it again with a current docker, buildah or skopeo"
            )
        return Manifest(data=data, media_type=media_type, digest=actual)

    async def _fetch_blob(
        self,
        ep: _Endpoint,
        ref: ImageRef,
        digest: str,
        size: int,
        dest: Path,
        *,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        what = f"layer {digest}"
        with _open_append(dest) as out:
            have = out.tell()
            if have > size:  # not a prefix of this blob, whatever wrote it: start over
                out.truncate(0)
                have = 0
            for attempt in range(2):  # the second time without a range the registry refused
                if have == size:
                    return
                headers = {"Accept-Encoding": "identity"}  # the blob's bytes, exactly
                if have:
                    headers["Range"] = f"bytes={have}-"
                response = await self._get(ep, ref, f"blobs/{digest}", headers, resume=True)
                try:
                    status = response.status_code
                    if status == 404:
                        raise NotFound(
                            f"layer {digest} of image {ref} not found in registry {ep.name}"
                        )
                    if status not in (200, 206, 416):
                        raise await _status_error(ep, ref, response, what)
                    start = 0 if status == 200 else _range_start(response)
                    if start is None or start > have:
                        if not have or attempt:
                            raise Invalid(
                                f"registry {ep.name} answered with an unusable partial response "
                                f"(HTTP {status}) for {what}"
                            )
                        out.truncate(0)
                        have = 0
                        continue
                    if start < have:  # a 200 (the range was ignored) or an earlier start
                        out.truncate(start)
                        have = start
                    _check_length(ep, response, size - have, size, what)
                    try:
                        async for chunk in response.aiter_raw(_CHUNK):
                            # Never more than `size`: a longer body is cut here, and the
                            # digest check in the store judges what was kept.
                            out.write(chunk[: size - have])
                            have = min(size, have + len(chunk))
                            if on_bytes is not None:
                                on_bytes(have)
                            if have == size:
                                break
                    except httpx.HTTPError as e:
                        raise _network_error(ep, e, f"fetching {what}", resume=True) from None
                finally:
                    await response.aclose()
                break
        if have != size:
            raise Unavailable(
                f"connection lost while fetching {what} from registry {ep.name} "
                f"({have} of {size} bytes): pull again to resume"
            )

    async def _read_blob(self, ep: _Endpoint, ref: ImageRef, digest: str, size: int) -> bytes:
        what = f"blob {digest}"
        response = await self._get(ep, ref, f"blobs/{digest}", {"Accept-Encoding": "identity"})
        try:
            if response.status_code == 404:
                raise NotFound(f"{what} of image {ref} not found in registry {ep.name}")
            if response.status_code != 200:
                raise await _status_error(ep, ref, response, what)
            data = await _read_capped(ep, response, size, what, raw=True)
        finally:
            await response.aclose()
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest_hex(digest):
            raise Invalid(
                f"{what} from registry {ep.name} does not match its digest and size: "
                "the image is corrupt"
            )
        return data

    # -- requests and authentication --------------------------------------------------------------

    async def _get(
        self,
        ep: _Endpoint,
        ref: ImageRef,
        path: str,
        headers: Mapping[str, str],
        *,
        resume: bool = False,
    ) -> httpx.Response:
        """GET `path` under the repository, authenticating as the registry asks.

        Returns the (streamed, to be closed by the caller) response to the last attempt,
        which is not a 401; raises Invalid when the registry refuses our credentials.
        """
        client = self._client(ep.registry)
        url = f"{ep.base}/v2/{ref.repository}/{path}"
        auth = self._known_auth(ep, ref.repository)
        fresh = ""  # the scheme of credentials obtained for this very request: a 401 is final
        while True:
            try:
                response = await client.send(
                    client.build_request("GET", url, headers={**headers, **auth}), stream=True
                )
            except httpx.HTTPError as e:
                raise _network_error(ep, e, f"fetching {path}", resume=resume) from None
            if response.status_code != 401:
                return response
            challenges = _challenges(response.headers.get_list("www-authenticate"))
            await response.aclose()
            if fresh:
                # Basic: the credentials are wrong. Bearer: the token server gave a token
                # that does not grant the pull (anonymous, or a user without access).
                raise self._refused(ep, ref, denied=fresh == "bearer")
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            basic = next((c for c in challenges if c.scheme == "basic"), None)
            if bearer is not None:
                sent = auth.get("Authorization", "").removeprefix("Bearer ")
                token = await self._token(ep, ref, bearer, stale=sent or None)
                auth, fresh = {"Authorization": f"Bearer {token}"}, "bearer"
            elif basic is not None:
                if not ep.username or auth:  # none configured, or they went with this request
                    raise self._refused(ep, ref)
                self._basic.add(ep.name)
                auth, fresh = {"Authorization": _basic(ep.username, ep.password)}, "basic"
            elif challenges:
                schemes = ", ".join(sorted({c.scheme for c in challenges}))
                raise Unsupported(
                    f"registry {ep.name} asks for {schemes} authentication; hutch supports "
                    "Basic and Bearer (token) authentication"
                )
            else:
                raise Invalid(
                    f"registry {ep.name} refused the request (401) without saying how to "
                    "authenticate (no WWW-Authenticate header)"
                )

    def _known_auth(self, ep: _Endpoint, repository: str) -> dict[str, str]:
        """What an earlier challenge taught us to send, so most requests need no 401 first."""
        scope = self._scopes.get((ep.name, repository))
        if scope is not None:
            cached = self._tokens.get((ep.name, scope))
            if cached is not None and cached[1] > time.monotonic():
                return {"Authorization": f"Bearer {cached[0]}"}
        if ep.name in self._basic and ep.username:
            return {"Authorization": _basic(ep.username, ep.password)}
        return {}

    async def _token(
        self, ep: _Endpoint, ref: ImageRef, challenge: _Challenge, stale: str | None
    ) -> str:
        """A bearer token for the challenge's scope: cached, or fresh from its token server.
        `stale` is a token the registry just refused, so it is not handed out again."""
        scope = challenge.params.get("scope") or f"repository:{ref.repository}:pull"
        key = (ep.name, scope)
        self._scopes[(ep.name, ref.repository)] = scope
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent 401s for one scope fetch one token
            cached = self._tokens.get(key)
            if cached is not None and cached[0] != stale and cached[1] > time.monotonic():
                return cached[0]
            token, lifetime = await self._fetch_token(ep, ref, challenge, scope)
            self._tokens[key] = (token, time.monotonic() + lifetime - _TOKEN_MARGIN)
            return token

    async def _fetch_token(
        self, ep: _Endpoint, ref: ImageRef, challenge: _Challenge, scope: str
    ) -> tuple[str, float]:
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Invalid(f"registry {ep.name} names no usable token server (realm {realm!r})")
        if parts.scheme == "http" and ep.base.startswith("https:") and ep.username:
            raise Invalid(
                f"registry {ep.name} wants credentials sent to {realm} over plain HTTP; "
                "refusing to send them unencrypted"
            )
        service = challenge.params.get("service")
        query = httpx.QueryParams({"service": service} if service else {})
        for s in scope.split():  # a challenge may name several scopes, one parameter each
            query = query.add("scope", s)
        client = self._client(ep.registry)
        headers = {"Authorization": _basic(ep.username, ep.password)} if ep.username else {}
        try:
            response = await client.send(
                client.build_request("GET", realm, params=query, headers=headers),
                stream=True,
            )
        except httpx.HTTPError as e:
            raise _network_error(ep, e, f"getting a token from {realm}", resume=False) from None
        try:
            if response.status_code in (401, 403):
                raise self._refused(ep, ref)
            if response.status_code != 200:
                raise await _status_error(ep, ref, response, f"a token from {realm}")
            data = await _read_capped(ep, response, _MAX_TOKEN_BYTES, f"a token from {realm}")
        finally:
            await response.aclose()
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
            raise Invalid(f"token server {realm} of registry {ep.name} sent no usable token")
        lifetime = doc.get("expires_in") if isinstance(doc, dict) else None
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = _TOKEN_LIFETIME
        return token, float(lifetime)

    def _refused(self, ep: _Endpoint, ref: ImageRef, *, denied: bool = False) -> Invalid:
        if not ep.username:
            hint = f" (or check that {ref.repository} exists)" if denied else ""
            return Invalid(
                f'registry {ep.name} needs credentials: set registries."{ep.name}".username'
                f"/password{hint}"
            )
        if denied:
            return Invalid(
                f"registry {ep.name} refused user {ep.username!r} access to {ref.repository}"
            )
        return Invalid(f"registry {ep.name} refused the credentials for user {ep.username!r}")

    # -- endpoints and connections ----------------------------------------------------------------

    def _endpoints(self, registry: str) -> list[_Endpoint]:
        config = self._configs.get(registry, RegistryConfig())
        mirrors = [
            _Endpoint(registry, m.rstrip("/"), m.rstrip("/"), "", "", mirror=True)
            for m in config.mirrors
        ]
        origin = _Endpoint(
            registry,
            base_url(registry, config),
            registry,
            config.username,
            config.password,
            mirror=False,
        )
        return [*mirrors, origin]

    async def _from_endpoints(
        self, registry: str, attempt: Callable[[_Endpoint], Awaitable[_T]], *, what: str
    ) -> _T:
        """`attempt` on each mirror in turn, then on the registry: the first that works.
        Forbidden, before any connection, for a registry that is neither allowed nor configured."""
        self._names.check(registry)
        *mirrors, origin = self._endpoints(registry)
        for ep in mirrors:
            try:
                return await attempt(ep)
            except HutchError as e:
                log.info("mirror %s could not serve %s (%s); trying the next", ep.name, what, e)
        return await attempt(origin)

    def _client(self, registry: str) -> httpx.AsyncClient:
        client = self._http.get(registry)
        if client is None:
            config = self._configs.get(registry, RegistryConfig())
            context = _ssl_context(registry, config)
            client = httpx.AsyncClient(
                verify=context,
                transport=CheckedTransport(context, self._trusted),
                timeout=self._timeout,
                follow_redirects=True,  # registries send blobs from storage elsewhere
                headers={"User-Agent": "hutch"},
            )
            self._http[registry] = client
        return client


def _check_mirror(registry: str, mirror: str) -> None:
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise Invalid(
            f'mirror {mirror!r} of registry {registry} is not a base URL: use "https://host[:port]"'
        )


def _ssl_context(registry: str, config: RegistryConfig) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if config.ca_file is not None:
        try:
            context.load_verify_locations(cafile=config.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise Invalid(
                f"cannot use CA file {config.ca_file} of registry {registry}: {e}; fix "
                f'registries."{registry}".ca_file'
            ) from None
    return context


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _challenges(values: list[str]) -> list[_Challenge]:
    """Parse WWW-Authenticate values (RFC 7235): `Bearer realm="...",service="...",scope="..."`.
    One value may hold several challenges; each starts with a scheme not followed by `=`."""
    out: list[_Challenge] = []
    for value in values:
        pos, end = 0, len(value)
        while pos < end:
            if value[pos] in " \t,":
                pos += 1
                continue
            name = _TOKEN.match(value, pos)
            if name is None:
                break  # malformed: keep what parsed so far
            pos = _skip_spaces(value, name.end())
            if pos < end and value[pos] == "=" and out:
                pos = _skip_spaces(value, pos + 1)
                quoted = _QUOTED.match(value, pos)
                if quoted is not None:
                    param = re.sub(r"\\(.)", r"\1", quoted.group(1))
                    pos = quoted.end()
                else:  # a token, leniently: some servers leave URLs unquoted
                    bare = _BARE.match(value, pos)
                    assert bare is not None  # it matches the empty string
                    param, pos = bare.group(), bare.end()
                out[-1].params[name.group().lower()] = param
            else:
                out.append(_Challenge(name.group().lower(), {}))
    return out


def _skip_spaces(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _range_start(response: httpx.Response) -> int | None:
    """Where a 206 response's body starts in the blob, from its Content-Range."""
    m = _CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
    return int(m.group(1)) if m else None


def _check_length(
    ep: _Endpoint, response: httpx.Response, expect: int, size: int, what: str
) -> None:
    length = response.headers.get("content-length", "")
    if (
        (length.isascii() and length.isdigit())
        and "content-encoding" not in response.headers
        and int(length) != expect
    ):
        raise Invalid(
            f"registry {ep.name} sends {int(length) + size - expect} bytes for {what}, whose "
            f"descriptor says {size}: the image is corrupt"
        )


def _open_append(path: Path) -> IO[bytes]:
    # Blocking appends from the event loop, deliberately: chunks of at most 64 KiB land in the
    # page cache (the store fsyncs before committing), and a thread hop per chunk would cost
    # more than it saves and let a cancelled pull close the file under a pending write.
    return open(path, "ab")


async def _read_capped(
    ep: _Endpoint, response: httpx.Response, limit: int, what: str, *, raw: bool = False
) -> bytes:
    """The body, refused (Invalid) past `limit` bytes; `raw` skips content decoding."""
    length = response.headers.get("content-length", "")
    if (
        (length.isascii() and length.isdigit())
        and int(length) > limit
        and (raw or "content-encoding" not in response.headers)
    ):
        raise Invalid(f"{what} from registry {ep.name} is {length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    total = 0
    try:
        stream = response.aiter_raw(_CHUNK) if raw else response.aiter_bytes(_CHUNK)
        async for chunk in stream:
            total += len(chunk)
            if total > limit:
                raise Invalid(f"{what} from registry {ep.name} is larger than {limit} bytes")
            chunks.append(chunk)
    except httpx.HTTPError as e:
        raise _network_error(ep, e, f"fetching {what}", resume=False) from None
    return b"".join(chunks)


async def _status_error(
    ep: _Endpoint, ref: ImageRef, response: httpx.Response, what: str
) -> HutchError:
    """The error for an unexpected status, with the registry's own message when it sent one."""
    try:
        body = await _read_capped(ep, response, _MAX_ERROR_BYTES, what)
    except HutchError:
        body = b""
    detail = _error_detail(body) or response.reason_phrase or "no reason given"
    status = response.status_code
    if status == 403:
        return Invalid(f"registry {ep.name} denied access to {ref.repository}: {detail}")
    text = f"registry {ep.name} answered HTTP {status} for {what}: {detail}"
    if status == 429 or status >= 500:
        return Unavailable(f"{text}; try again later")
    return Invalid(text)


def _error_detail(body: bytes) -> str:
    """The messages of a registry error body: {"errors": [{"code": ..., "message": ...}]}."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors[:5]:
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
            parts.append(": ".join(str(x) for x in (code, message) if x))
    return "; ".join(p for p in parts if p)


def _network_error(ep: _Endpoint, e: httpx.HTTPError, doing: str, *, resume: bool) -> Unavailable:
    reason = str(e) or type(e).__name__
    if isinstance(e, httpx.TimeoutException):
        reason = f"timed out ({reason})"
    hint = ""
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        hint = f'; if it uses a private CA, set registries."{ep.registry}".ca_file'
    elif "WRONG_VERSION_NUMBER" in reason.upper():
        hint = f'; if it speaks plain HTTP, set registries."{ep.registry}".insecure'
    tail = ": pull again to resume" if resume else ""
    if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
        return Unavailable(f"cannot reach registry {ep.name} ({reason}{hint}){tail}")
    return Unavailable(f"connection lost while {doing} from registry {ep.name} ({reason}){tail}")
