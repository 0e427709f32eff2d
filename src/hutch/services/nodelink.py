"""The controller's calls to node agents: logs, exec, signals and images of their sandboxes.

A node trusts calls that carry its controller key, HMAC-SHA256(controller secret, node id): no
per-node secret has to be stored, and every controller sharing the secret can call every node.
"""

import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError
from websockets.asyncio.client import ClientConnection, connect

from hutch.model.errors import TooManyRequests, Unauthenticated, Unavailable, error_class
from hutch.model.machine import Node
from hutch.wire.images import ImageUsage, ImageView, PullEvent
from hutch.wire.snapshots import NodeMachineSnapshot, NodeMachineSnapshotTaken
from hutch.wire.volumes import (
    NodeSnapshotCreate,
    NodeSnapshotInfo,
    NodeVolumeCapacity,
    NodeVolumeClone,
    NodeVolumeCreate,
    NodeVolumeInfo,
    VolumeExtend,
)

T = TypeVar("T")


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

    async def images(self, node: Node, project: str) -> list[ImageView]:
        body = await self._call(node, "GET", "/node/v1/images", params={"project": project})
        return _parse(node, _IMAGES, body)

    async def image(self, node: Node, project: str, ref: str) -> ImageView:
        body = await self._call(
            node, "GET", f"/node/v1/images/{quote(ref, safe='')}", params={"project": project}
        )
        return _parse(node, _IMAGE, body)

    async def image_usage(self, node: Node, project: str) -> ImageUsage:
        body = await self._call(
            node, "GET", f"/node/v1/projects/{quote(project, safe='')}/images/usage"
        )
        return _parse(node, _USAGE, body)

    async def delete_image(self, node: Node, project: str, ref: str, public: bool) -> None:
        params = {"project": project, "public": str(public).lower()}
        await self._call(node, "DELETE", f"/node/v1/images/{quote(ref, safe='')}", params=params)

    async def forget_project(self, node: Node, project: str) -> None:
        await self._call(node, "DELETE", f"/node/v1/projects/{quote(project, safe='')}/images")

    async def pull(
        self, node: Node, project: str, ref: str, public: bool, limits: Mapping[str, int]
    ) -> AsyncIterator[PullEvent]:
        """The node's pull progress, event by event; the last one carries the image (or why
        there is none)."""
        body = {"ref": ref, "public": public}
        params = {"project": project, **limits}
        async for line in self._stream(
            node, "POST", "/node/v1/images/pull", params=params, json=body
        ):
            yield _parse(node, _PULL_EVENT, line)

    async def import_(
        self,
        node: Node,
        project: str,
        body: AsyncIterator[bytes],
        *,
        names: list[str],
        public: bool,
        limits: Mapping[str, int],
    ) -> list[ImageView]:
        params = [("project", project), ("public", str(public).lower())]
        params += [(k, str(v)) for k, v in limits.items()] + [("name", n) for n in names]
        answer = await self._call(
            node, "POST", "/node/v1/images/import", params=params, content=body
        )
        return _parse(node, _IMAGES, answer)

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

    # -- machine snapshots (agent/snapshotapi.py) --------------------------------------------------

    async def snapshot_machine(
        self, node: Node, sandbox: str, snapshot: str
    ) -> NodeMachineSnapshotTaken:
        body = _json(NodeMachineSnapshot(snapshot_id=snapshot))
        path = f"/node/v1/sandboxes/{quote(sandbox, safe='')}/snapshot"
        return _parse(node, _TAKEN, await self._call(node, "POST", path, json=body))

    async def delete_machine_snapshot(self, node: Node, snapshot: str) -> None:
        await self._call(node, "DELETE", f"/node/v1/snapshots/{quote(snapshot, safe='')}")

    # -- volumes (agent/volumeapi.py) -------------------------------------------------------------

    async def volume_capacity(self, node: Node) -> NodeVolumeCapacity:
        return _parse(node, _CAPACITY, await self._call(node, "GET", "/node/v1/volumes/capacity"))

    async def create_volume(self, node: Node, body: NodeVolumeCreate) -> NodeVolumeInfo:
        answer = await self._call(node, "POST", "/node/v1/volumes", json=_json(body))
        return _parse(node, _VOLUME, answer)

    async def volumes_now(
        self, node: Node, ids: Sequence[str], timeout: float
    ) -> list[NodeVolumeInfo]:
        """The node's volumes of `ids` as they are now (their used bytes), within `timeout`."""
        params = {"ids": ",".join(ids)}
        body = await self._call(node, "GET", "/node/v1/volumes", params=params, timeout=timeout)
        return _parse(node, _VOLUMES, body)

    async def volume(self, node: Node, volume: str) -> NodeVolumeInfo:
        return _parse(node, _VOLUME, await self._call(node, "GET", _vol(volume)))

    async def delete_volume(self, node: Node, volume: str) -> None:
        await self._call(node, "DELETE", _vol(volume))

    async def grow_volume(self, node: Node, volume: str, size_bytes: int) -> NodeVolumeInfo:
        body = _json(VolumeExtend(size_bytes=size_bytes))
        answer = await self._call(node, "POST", _vol(volume, "grow"), json=body)
        return _parse(node, _VOLUME, answer)

    async def clone_volume(self, node: Node, volume: str, body: NodeVolumeClone) -> NodeVolumeInfo:
        answer = await self._call(node, "POST", _vol(volume, "clone"), json=_json(body))
        return _parse(node, _VOLUME, answer)

    async def snapshot_volume(
        self, node: Node, volume: str, snapshot: str, sandbox: str = "", target: str = ""
    ) -> NodeSnapshotInfo:
        """`sandbox` and `target`: the running sandbox that has the volume mounted there, whose
        freeze of it the snapshot is taken in."""
        body = _json(NodeSnapshotCreate(id=snapshot, sandbox=sandbox, target=target))
        answer = await self._call(node, "POST", _vol(volume, "snapshots"), json=body)
        return _parse(node, _SNAPSHOT, answer)

    async def snapshots_now(
        self, node: Node, volume: str, timeout: float
    ) -> list[NodeSnapshotInfo]:
        """The volume's snapshots on the node as they are now, within `timeout`."""
        body = await self._call(node, "GET", _vol(volume, "snapshots"), timeout=timeout)
        return _parse(node, _SNAPSHOTS, body)

    async def delete_snapshot(self, node: Node, volume: str, snapshot: str) -> None:
        await self._call(node, "DELETE", _vol(volume, "snapshots", snapshot))

    async def restore_volume(self, node: Node, volume: str, snapshot: str) -> NodeVolumeInfo:
        body = _json(NodeSnapshotCreate(id=snapshot))
        answer = await self._call(node, "POST", _vol(volume, "restore"), json=body)
        return _parse(node, _VOLUME, answer)

    async def export_volume(
        self, node: Node, volume: str, snapshot: str = ""
    ) -> AsyncIterator[bytes]:
        """The backend's export format, relayed chunk by chunk as the node sends it."""
        params = {"snapshot": snapshot} if snapshot else {}
        async for chunk in self._stream(
            node, "GET", _vol(volume, "export"), params=params, lines=False
        ):
            yield chunk

    async def import_volume(
        self, node: Node, volume: str, body: AsyncIterator[bytes], max_bytes: int
    ) -> NodeVolumeInfo:
        params = {"id": volume, "max_bytes": str(max_bytes)}
        answer = await self._call(
            node, "POST", "/node/v1/volumes/import", params=params, content=body
        )
        return _parse(node, _VOLUME, answer)

    async def _call(self, node: Node, method: str, path: str, **kwargs: Any) -> bytes:
        """The body of the node's answer; its refusal as hutch's own error."""
        try:
            response = await self._http.request(
                method, self._url(node, path), headers=self._headers(node), **kwargs
            )
        except httpx.HTTPError as e:
            raise Unavailable(f"node {node.name} cannot be reached: {e}") from None
        _raise_for(node, response.status_code, response.content)
        return response.content

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


# The wire types of the node's answers (wire/images.py: agent/nodeapi.py makes them).
_IMAGE = TypeAdapter(ImageView)
_IMAGES = TypeAdapter(list[ImageView])
_USAGE = TypeAdapter(ImageUsage)
_PULL_EVENT = TypeAdapter(PullEvent)
_CAPACITY = TypeAdapter(NodeVolumeCapacity)
_VOLUME = TypeAdapter(NodeVolumeInfo)
_SNAPSHOT = TypeAdapter(NodeSnapshotInfo)
_VOLUMES = TypeAdapter(list[NodeVolumeInfo])
_SNAPSHOTS = TypeAdapter(list[NodeSnapshotInfo])
_TAKEN = TypeAdapter(NodeMachineSnapshotTaken)


def _vol(volume: str, *rest: str) -> str:
    return "/node/v1/volumes/" + "/".join(quote(p, safe="") for p in (volume, *rest))


def _json(body: Any) -> Any:
    return body.model_dump(mode="json")


def _parse(node: Node, shape: TypeAdapter[T], body: bytes | str) -> T:
    """The node's JSON answer as its wire type: one that does not fit is the node's fault, and
    to the user the node is unavailable."""
    try:
        return shape.validate_json(body)
    except ValidationError as e:
        raise Unavailable(f"node {node.name} answered what hutch cannot read: {e}") from None


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
