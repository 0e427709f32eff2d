"""The requests of the API as data (`Call`), and where and as whom they go (`Endpoint`).

Kept apart from `_core`, which parses answers into the wire models, so that what needs no
model (the CLI's tables, `hutch.client.plain`) imports neither pydantic nor the wire types."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx

from hutch.client.errors import NoConnection, Unavailable

if TYPE_CHECKING:
    from hutch.wire.common import Request


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request of the API, as data."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    body: "Request | None" = None  # sent as JSON, without the fields left unset
    json: Any = None  # a raw JSON body (Client.request)
    content: Any = field(default=None, compare=False)  # raw bytes: image archives
    scoped: bool = False  # acts in a project: `?project=` is added when the client names one
    hold: float | None = 0.0  # seconds the server may take before answering; None: a stream


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom a client talks (resolved once, by hutch.client.config.resolve)."""

    url: str
    token: str
    project: str | None
    timeout: float

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}

    def http_args(self, call: Call) -> dict[str, Any]:
        """Keyword arguments of httpx's `request`/`stream` for `call`."""
        params = list(call.params)
        if call.scoped and self.project:
            params.append(("project", self.project))
        args: dict[str, Any] = {"method": call.method, "url": call.path, "params": params}
        if call.body is not None:
            args["content"] = call.body.model_dump_json(exclude_unset=True)
            args["headers"] = {"Content-Type": "application/json"}
        elif call.json is not None:
            args["json"] = call.json
        elif call.content is not None:
            args["content"] = call.content
            args["headers"] = {"Content-Type": "application/octet-stream"}
        if call.hold is None:
            args["timeout"] = httpx.Timeout(self.timeout, read=None)
        elif call.hold:
            args["timeout"] = httpx.Timeout(self.timeout, read=self.timeout + call.hold)
        return args

    def unreachable(self, e: httpx.TransportError) -> Unavailable:
        reason = str(e) or type(e).__name__
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return NoConnection(f"controller {self.url} cannot be reached: {reason}")
        return Unavailable(f"controller {self.url} stopped answering: {reason}")


# The first pages of the listings that take no filters (`next_page` walks on).
IMAGES = Call("GET", "/v1/images", scoped=True)
PROJECTS = Call("GET", "/v1/projects")
NODES = Call("GET", "/v1/nodes")
NETWORKS = Call("GET", "/v1/networks", scoped=True)
GROUPS = Call("GET", "/v1/security-groups", scoped=True)
VOLUMES = Call("GET", "/v1/volumes", scoped=True)
SNAPSHOTS = Call("GET", "/v1/snapshots", scoped=True)
POOLS = Call("GET", "/v1/pools", scoped=True)


def listing(
    state: str | Sequence[str] | None,
    labels: Mapping[str, str] | None,
    include_destroyed: bool,
    page_size: int | None,
) -> Call:
    """The first page of the project's machines: those in `state` (one or several) with all of
    `labels`, the destroyed ones too if `include_destroyed`."""
    states = [state] if isinstance(state, str) else list(state or ())
    params = [("state", s) for s in states]
    params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
    if include_destroyed:
        params.append(("all", "true"))
    if page_size is not None:
        params.append(("limit", str(page_size)))
    return Call("GET", "/v1/machines", params=tuple(params), scoped=True)


def next_page(call: Call, cursor: str | None) -> Call | None:
    """The call for the page after the one `call` fetched, which gave `cursor` (None: it was
    the last)."""
    if cursor is None:
        return None
    params = (*((k, v) for k, v in call.params if k != "cursor"), ("cursor", cursor))
    return replace(call, params=params)
