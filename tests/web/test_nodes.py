"""/ui/nodes: nodes with their capacity and machines, for system tokens only (as the API)."""

import re

from tests.helpers.api import Api
from tests.helpers.webpages import alert, signed_in


async def test_nodes_their_capacity_and_machines_for_system_tokens_only(api: Api) -> None:
    token = await api.token("alpha", "member")
    assert (await api.machine(token, name="web", cpus=2, memory_mib=256)).status_code == 201
    await api.placed(token, "web")
    system = await signed_in(api, None)
    page = (await system.get("/ui/nodes")).text
    assert '<tr id="node-sim-1">' in page
    # vCPUs as the scheduler counts them (and `hutch node ls`): the host's CPUs x the overcommit.
    vcpus = r'<meter min="0" max="256" value="2"[^>]*aria-label="vCPUs allocated">'
    vcpus += r".*\s+2 / 256 \(64x4\)"
    assert re.search(vcpus, page)
    page = (await system.get("/ui/nodes/sim-1")).text
    assert re.search(vcpus, page)
    assert ">web</a>" in page and "<td>alpha</td>" in page and "256 MiB" in page
    r = await system.post("/ui/nodes/sim-1/cordon")
    assert r.status_code == 303 and r.headers["location"] == "/ui/nodes/sim-1"
    assert (await api.call("GET", "/v1/nodes/sim-1")).json()["cordoned"] is True
    assert "Uncordon" in (await system.get("/ui/nodes/sim-1")).text
    r = await system.post("/ui/nodes/sim-1/remove")
    assert r.status_code == 409 and "drain it first" in alert(r.text)
    await api.join("sim-2")
    assert (await system.post("/ui/nodes/sim-2/remove")).status_code == 303
    assert 'id="node-sim-2"' not in (await system.get("/ui/nodes")).text
    assert (await system.get("/ui/nodes/nosuch")).status_code == 404
    r = await system.post("/ui/nodes/sim-1/explode")
    assert r.status_code == 400, r.text

    admin = await signed_in(api, "alpha", "admin")
    assert 'href="/ui/nodes"' not in (await admin.get("/ui/machines")).text  # not in the menu
    for r in (await admin.get("/ui/nodes"), await admin.get("/ui/nodes/sim-1"),
              await admin.post("/ui/nodes/sim-1/uncordon")):  # fmt: skip
        assert r.status_code == 403 and "only system tokens may see or change nodes" in alert(
            r.text
        )
    assert (await api.call("GET", "/v1/nodes/sim-1")).json()["cordoned"] is True
    await admin.close()
    await system.close()
