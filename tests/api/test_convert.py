"""A machine's spec at each boundary: the API's body, the model, what its node is told, and what
the node asks its driver for. Each step is one conversion; the names stay the same throughout."""

import orjson

from hutch.agent.sandbox import RunRequest
from hutch.api import convert
from hutch.model.machine import Desired, Machine, MachineState
from hutch.model.network import PortMapping
from hutch.model.sandbox import Resources
from hutch.model.tenancy import Quota
from hutch.services.networks import Wiring
from hutch.store.base import Records
from hutch.wire.machines import MachineCreate

BODY = {
    "image": "busybox:1",
    "command": ["sh", "-c", "echo $A"],
    "entrypoint": None,
    "env": {"A": "b=c", "EMPTY": ""},
    "workdir": "/srv",
    "user": "nobody",
    "cpus": 2,
    "memory_mib": 256,
    "tty": True,
    "rows": 40,
    "cols": 120,
}


def _machine(**body: object) -> Machine:
    spec = convert.spec_of(MachineCreate.model_validate({**BODY, **body}))
    return Machine(
        id="m-1", project_id="p-1", name="web", spec=spec, state=MachineState.CREATED,
        desired=Desired.RUNNING, created_at=1.0, updated_at=1.0, generation=3,
    )  # fmt: skip


def test_the_body_becomes_the_model_and_shows_back_as_it_came() -> None:
    m = _machine()
    assert m.spec.env == ("A=b=c", "EMPTY=")  # entries, as a process gets them
    assert m.spec.command == ("sh", "-c", "echo $A") and m.spec.entrypoint is None
    view = convert.machine_view(m, "alpha").model_dump()
    assert {k: view[k] for k in BODY} == BODY


def test_the_node_is_told_the_model_and_runs_it_under_the_same_names() -> None:
    m = _machine()
    a = convert.assignment(m, Quota(images_mib=5))
    assert (a.image, a.command, a.entrypoint, a.env) == (
        "busybox:1", ["sh", "-c", "echo $A"], None, ["A=b=c", "EMPTY="],
    )  # fmt: skip
    assert (a.sandbox, a.machine, a.image_limits) == ("m-1-3", "m-1", {"max_stored": 5 << 20})
    run = RunRequest.of(a, "sha256:" + "0" * 64)
    assert run == RunRequest(
        image="sha256:" + "0" * 64, command=("sh", "-c", "echo $A"), entrypoint=None,
        env=("A=b=c", "EMPTY="), workdir="/srv", user="nobody",
        resources=Resources(cpus=2, memory_mib=256, scratch_mib=0), hostname="m-1",
        sandbox_id="m-1-3", tty=True, stdin=False, rows=40, cols=120,
    )  # fmt: skip
    # What the scheduler counted is what the driver gives.
    assert run.resources.scratch_bytes == m.spec.scratch_mib << 20 == 128 << 20


def test_no_command_stays_the_image_s_all_the_way() -> None:
    m = _machine(command=None, entrypoint=["/bin/echo"], disk_mib=64)
    run = RunRequest.of(convert.assignment(m, Quota()), "img")
    assert (run.command, run.entrypoint, run.resources.scratch_mib) == (None, ("/bin/echo",), 64)


def test_a_listed_machine_shows_its_wiring_in_order_whatever_order_the_store_read_it() -> None:
    """The store's aggregates come in their scan's order: the list puts NICs and groups by
    position and ports by host port and protocol, as the machine's own view has them."""
    m = _machine()
    wiring = Wiring(
        addresses=(("front", "net-1", "02:00:00:00:00:01", "10.0.0.2", "fd00::2"),
                   ("back", "net-2", "02:00:00:00:00:02", "10.0.1.2", "fd01::2")),
        ports=(PortMapping(80, 8080, "tcp", ""), PortMapping(80, 8081, "udp", ""),
               PortMapping(443, 8443, "tcp", "")),
        security_groups=("web", "db"),
    )  # fmt: skip
    one = convert.machine_view(m, "alpha", wiring).model_dump(mode="json")
    r = convert.record(m, wiring)
    for key in ("addresses", "ports", "security_groups"):
        r[key] = r[key][::-1]  # as a scan could give them
    [listed] = convert.machine_docs(Records(tuple(r), [tuple(r.values())]), "alpha")
    assert orjson.loads(orjson.dumps(listed)) == one
    assert listed["networks"] == ["front", "back"] and listed["security_groups"] == ["web", "db"]
    assert [(p["host_port"], p["protocol"]) for p in listed["ports"]] == [
        (80, "tcp"), (80, "udp"), (443, "tcp"),
    ]  # fmt: skip
    assert listed["dns"] == "web.alpha.internal"
