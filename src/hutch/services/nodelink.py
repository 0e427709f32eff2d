"""The controller's calls to node agents: logs, exec, signals and images of their sandboxes.

A node trusts calls that carry its controller key, HMAC-SHA256(controller secret, node id): no
per-node secret has to be stored, and every controller sharing the secret can call every node.
"""

import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect

from hutch.model.errors import TooManyRequests, Unauthenticated, Unavailable, error_class
from hutch.model.machine import Node


def controller_key(secret: bytes, node_id: str) -> str:
    return hmac.new(secret, node_id.encode(), hashlib.sha256).hexdigest()


class NodeLink:
    def __init__(self, secret: bytes, timeout: float = 30.0) -> None:
        self._secret = secret
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, read=None))

    async def close(self) -> None:
        await self._http.aclose()

    def _headers(self, node: Node) -> dict[str, str]:
        return {"Authorization": f"Bearer {controller_key(self._secret, node.id)}"}

    def _url(self, node: Node, path: str) -> str:
        return node.address.rstrip("/") + path

    async def signal(self, node: Node, sandbox: str, sig: str) -> None:
        await self._call(node, "POST", f"/node/v1/sandboxes/{sandbox}/signal", json={"signal": sig})

    async def logs(
        self, node: Node, sandbox: str, params: Mapping[str, str]
    ) -> AsyncGenerator[bytes, None]:
        """The sandbox's log as NDJSON, in the chunks the node sends (not cut at lines: the
        controller relays them as they are, and a line's cost is the node's alone)."""
        async for chunk in self._stream(
            node, "GET", f"/node/v1/sandboxes/{sandbox}/logs", params=params, lines=False
        ):
            yield chunk

    async def exec(self, node: Node, sandbox: str) -> ClientConnection:
        """An exec WebSocket to the node: the caller sends ExecStart first, then relays."""
        return await self._websocket(node, f"/node/v1/sandboxes/{sandbox}/exec")

    async def attach(self, node: Node, sandbox: str) -> ClientConnection:
        """An attach WebSocket to the node, into the sandbox's main process; the caller relays."""
        return await self._websocket(node, f"/node/v1/sandboxes/{sandbox}/attach")

    async def _websocket(self, node: Node, path: str) -> ClientConnection:
        url = self._url(node, path).replace("http", "ws", 1)
        try:
            return await connect(url, additional_headers=self._headers(node), max_size=1 << 20)
        except (OSError, TimeoutError) as e:
            raise Unavailable(f"node {node.name} cannot be reached: {e}") from None

    async def images(self, node: Node, project: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = await self._call(
            node, "GET", "/node/v1/images", params={"project": project}
        )
        return data

    async def image(self, node: Node, project: str, ref: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._call(
            node, "GET", f"/node/v1/images/{quote(ref, safe='')}", params={"project": project}
        )
        return data

    async def image_usage(self, node: Node, project: str) -> dict[str, int]:
        data: dict[str, int] = await self._call(
            node, "GET", f"/node/v1/projects/{quote(project, safe='')}/images/usage"
        )
        return data

    async def delete_image(self, node: Node, project: str, ref: str, public: bool) -> None:
        params = {"project": project, "public": str(public).lower()}
        await self._call(node, "DELETE", f"/node/v1/images/{quote(ref, safe='')}", params=params)

    async def forget_project(self, node: Node, project: str) -> None:
        await self._call(node, "DELETE", f"/node/v1/projects/{quote(project, safe='')}/images")

    async def pull(
        self, node: Node, project: str, ref: str, public: bool, limits: Mapping[str, int]
    ) -> AsyncIterator[bytes]:
        body = {"ref": ref, "public": public}
        params = {"project": project, **limits}
        async for line in self._stream(
            node, "POST", "/node/v1/images/pull", params=params, json=body
        ):
            yield line

    async def import_(
        self,
        node: Node,
        project: str,
        body: AsyncIterator[bytes],
        *,
        names: list[str],
        public: bool,
        limits: Mapping[str, int],
    ) -> list[dict[str, Any]]:
        params = [("project", project), ("public", str(public).lower())]
        params += [(k, str(v)) for k, v in limits.items()] + [("name", n) for n in names]
        data: list[dict[str, Any]] = await self._call(
            node, "POST", "/node/v1/images/import", params=params, content=body
        )
        return data

    @contextlib.asynccontextmanager
    async def archive(
        self, node: Node, project: str, ref: str
    ) -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        """The node's image `ref` for `project` as an OCI archive: its headers and bytes."""
        params = {"project": project, "ref": ref}
        try:
            async with self._http.stream(
                "GET", self._url(node, "/node/v1/archive"), headers=self._headers(node),
                params=params,
            ) as response:  # fmt: skip
                if response.status_code >= 400:
                    _raise_for(node, response.status_code, await response.aread())
                yield dict(response.headers), response.aiter_bytes(1 << 20)
        except httpx.HTTPError as e:
            raise Unavailable(f"node {node.name} stopped answering: {e}") from None

    async def _call(self, node: Node, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(
                method, self._url(node, path), headers=self._headers(node), **kwargs
            )
        except httpx.HTTPError as e:
            raise Unavailable(f"node {node.name} cannot be reached: {e}") from None
        _raise_for(node, response.status_code, response.content)
        return response.json() if response.content else None

    async def _stream(
        self, node: Node, method: str, path: str, *, lines: bool = True, **kwargs: Any
    ) -> AsyncIterator[bytes]:
        """The response's body: NDJSON lines, or (not `lines`) chunks as they arrive."""
        try:
            async with self._http.stream(
                method, self._url(node, path), headers=self._headers(node), **kwargs
            ) as response:
                if response.status_code >= 400:
                    _raise_for(node, response.status_code, await response.aread())
                if not lines:
                    async for chunk in response.aiter_bytes():
                        if chunk:
                            yield chunk
                    return
                async for line in response.aiter_lines():
                    if line:
                        yield line.encode() + b"\n"
        except httpx.HTTPError as e:
            raise Unavailable(f"node {node.name} stopped answering: {e}") from None


def _raise_for(node: Node, status: int, body: bytes) -> None:
    """The node's problem+json, as hutch's own error: the node already phrased it for users."""
    if status < 400:
        return
    try:
        problem = json.loads(body)
        detail, title = problem.get("detail", ""), problem.get("title", "")
    except (ValueError, AttributeError):
        detail, title = body.decode(errors="replace")[:200], ""
    error = error_class(status, title)
    # What a node says of the controller's own key or streams is not the user's doing: to the
    # user, the node is unavailable.
    if error is None or error in (Unauthenticated, TooManyRequests, Unavailable):
        raise Unavailable(f"node {node.name} answered {status}: {detail}")
    raise error(detail)
