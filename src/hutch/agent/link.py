"""The node agent's side of /agent/v1: join, heartbeat, long-poll assignments, report."""

import asyncio
import json
import ssl
from typing import Any, BinaryIO

import httpx

from hutch.model.errors import Invalid, Unavailable, error_class
from hutch.wire.nodes import (
    Activity,
    Assignments,
    Heartbeat,
    MachineReport,
    NodeRegister,
    NodeRegistered,
    Wake,
)
from hutch.wire.telemetry import Samples


class ControllerLink:
    def __init__(
        self,
        url: str,
        credential: str = "",
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.credential = credential
        # Long polls hold a request open for up to a minute: no read timeout on those.
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, read=90.0), verify=verify)

    async def fetch_ca(self) -> bytes:
        """The controller's CA, over a connection that verifies nothing: the caller checks
        it against a pin before trusting it."""
        async with httpx.AsyncClient(timeout=10.0, verify=False) as http:
            try:
                r = await http.get(self.url + "/agent/v1/ca")
            except httpx.HTTPError as e:
                raise Unavailable(f"controller {self.url} cannot be reached: {e}") from None
        if r.status_code != 200:
            raise Invalid(f"controller {self.url} serves no CA (is it HTTPS?): {r.status_code}")
        return r.content

    async def close(self) -> None:
        await self._http.aclose()

    async def register(self, join_secret: str, body: NodeRegister) -> NodeRegistered:
        data = await self._call(
            "POST", "/agent/v1/nodes", json=body.model_dump(), token=join_secret
        )
        return NodeRegistered.model_validate(data)

    async def heartbeat(self, node_id: str, address: str) -> None:
        body = Heartbeat(address=address).model_dump()
        await self._call("POST", f"/agent/v1/nodes/{node_id}/heartbeat", json=body)

    async def assignments(self, node_id: str, after: int, wait: float) -> Assignments:
        data = await self._call(
            "GET",
            f"/agent/v1/nodes/{node_id}/assignments",
            params={"after": after, "wait": wait},
        )
        return Assignments.model_validate(data)

    async def report(self, node_id: str, machine_id: str, report: MachineReport) -> None:
        await self._call(
            "POST",
            f"/agent/v1/nodes/{node_id}/machines/{machine_id}/report",
            json=report.model_dump(mode="json"),
        )

    async def activity(self, node_id: str, seen: dict[str, float]) -> None:
        body = Activity(machines=seen).model_dump()
        await self._call("POST", f"/agent/v1/nodes/{node_id}/activity", json=body)

    async def samples(self, node_id: str, samples: Samples) -> None:
        body = samples.model_dump(mode="json")
        await self._call("POST", f"/agent/v1/nodes/{node_id}/samples", json=body)

    async def wake(self, node_id: str, machine_id: str, generation: int, port: int) -> None:
        body = Wake(generation=generation, port=port).model_dump()
        await self._call("POST", f"/agent/v1/nodes/{node_id}/machines/{machine_id}/wake", json=body)

    async def image_archive(
        self, node_id: str, project: str, ref: str, out: BinaryIO
    ) -> dict[str, str]:
        """An image this node lacks, from a peer through the controller, written to `out` (an
        OCI archive); the headers that say whose it is and its digest."""
        url = f"{self.url}/agent/v1/nodes/{node_id}/images/archive"
        headers = {"Authorization": f"Bearer {self.credential}"}
        try:
            async with self._http.stream(
                "GET", url, headers=headers, params={"project": project, "ref": ref}
            ) as response:
                if response.status_code >= 400:
                    _raise(self.url, response.status_code, await response.aread())
                async for chunk in response.aiter_bytes(1 << 20):
                    await asyncio.to_thread(out.write, chunk)
                return {k.lower(): v for k, v in response.headers.items()}
        except httpx.HTTPError as e:
            raise Unavailable(f"controller {self.url} stopped answering: {e}") from None

    async def _call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.credential}"}
        try:
            response = await self._http.request(method, self.url + path, headers=headers, **kwargs)
        except httpx.HTTPError as e:
            raise Unavailable(f"controller {self.url} cannot be reached: {e}") from None
        if response.status_code >= 400:
            _raise(self.url, response.status_code, response.content)
        return response.json() if response.content else None


def _raise(url: str, status: int, body: bytes) -> None:
    """The controller's problem+json as hutch's own error (`model/errors.py` maps them)."""
    try:
        problem = json.loads(body)
        detail, title = problem.get("detail", ""), problem.get("title", "")
    except (ValueError, AttributeError):
        detail, title = body.decode(errors="replace")[:200], ""
    raise (error_class(status, title) or Unavailable)(f"controller {url}: {detail or status}")
