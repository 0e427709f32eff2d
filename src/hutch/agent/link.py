"""The node agent's side of /agent/v1: join, heartbeat, long-poll assignments, report."""

import ssl
from typing import Any

import httpx

from hutch.model.errors import Conflict, HutchError, Invalid, NotFound, Unauthenticated, Unavailable
from hutch.wire.nodes import Assignments, Heartbeat, MachineReport, NodeRegister, NodeRegistered

_ERRORS: dict[int, type[HutchError]] = {
    400: Invalid,
    401: Unauthenticated,
    404: NotFound,
    409: Conflict,
    422: Invalid,
}


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

    async def _call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.credential}"}
        try:
            response = await self._http.request(method, self.url + path, headers=headers, **kwargs)
        except httpx.HTTPError as e:
            raise Unavailable(f"controller {self.url} cannot be reached: {e}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", "")
            except ValueError:
                detail = response.text[:200]
            raise _ERRORS.get(response.status_code, Unavailable)(
                f"controller {self.url}: {detail or response.status_code}"
            )
        return response.json() if response.content else None
