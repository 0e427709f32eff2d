"""A machine's spec at each boundary: the API's body, the model, what its node is told, and what
the node asks its driver for. Each step is one conversion; the names stay the same throughout."""

from hutch.agent.sandbox import RunRequest
from hutch.api import convert
from hutch.model.machine import Desired, Machine, MachineState
from hutch.model.sandbox import Resources
from hutch.model.tenancy import Quota
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
