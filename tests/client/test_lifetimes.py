"""Machines' timeouts through the async SDK and the HTTP API, against the real controller: what
`extend` does, and what the API refuses, with which status (containers: the lifetime does not
depend on the runtime)."""

import httpx
import pytest

from hutch.client import AsyncClient, NotFound
from tests.controller import Controller, new_project

C = "container"


async def test_extend_and_what_the_api_refuses(
    aclient: AsyncClient, controller: Controller, project: str
) -> None:
    m = await aclient.machines.create("busybox", ["sleep", "600"], runtime=C, timeout_s=60)
    assert (m.timeout_s, m.on_timeout, m.extended_s) == (60, "stop", 0)
    assert m.time_left_s == 60 and m.expires_at is None  # not running yet: its clock stands
    more = await aclient.machines.extend(m, 30)
    assert more.extended_s == 30 and 60 < (more.time_left_s or 0) <= 90
    plain = await aclient.machines.create("busybox", ["sleep", "600"], runtime=C, start=False)

    def status(method: str, path: str, body: object) -> tuple[int, str]:
        r = httpx.request(
            method, controller.url + path, json=body, params={"project": project},
            headers={"Authorization": f"Bearer {controller.token}"},
        )  # fmt: skip
        return r.status_code, r.json().get("detail", "")

    extend = f"/v1/machines/{m.id}/extend"
    assert status("POST", extend, {"seconds": 0})[0] == 422
    assert status("POST", extend, {"seconds": -60})[0] == 422
    assert status("POST", extend, {"seconds": 1e12})[0] == 422
    assert status("POST", extend, {"seconds": "soon"})[0] == 422
    code, why = status("POST", f"/v1/machines/{plain.id}/extend", {"seconds": 60})
    assert (code, "no timeout to extend" in why) == (409, True)
    create = {"image": "busybox", "runtime": C, "start": False}
    assert status("POST", "/v1/machines", {**create, "timeout_s": 0})[0] == 422
    code, why = status("POST", "/v1/machines", {**create, "timeout_s": 60, "on_timeout": "suspend"})
    assert (code, "container runtime cannot be suspended" in why) == (400, True)
    assert status("POST", "/v1/machines", {**create, "on_timeout": "later"})[0] == 422

    elsewhere = new_project(controller)
    async with AsyncClient(controller.url, controller.token, project=elsewhere) as other:
        with pytest.raises(NotFound):  # another project's machine is not there
            await other.machines.extend(m.id, 60)
    assert (await aclient.machines.get(m)).extended_s == 30
    for each in (m, plain):
        await aclient.machines.delete(each, force=True)
