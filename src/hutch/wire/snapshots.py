"""Machine snapshots: the API's shapes, and what controllers and nodes say of them."""

from pydantic import Field

from hutch.wire.common import Request, View


class MachineSnapshotCreate(Request):
    machine: str = Field(
        min_length=1, max_length=64, description="a running micro-VM, by name or id"
    )
    name: str = Field(
        "", max_length=63, description="unique in the project; default: from the time"
    )


class MachineSnapshotView(View):
    id: str
    name: str
    project: str
    machine_id: str  # the machine it was taken of (it may be gone since)
    node: str | None  # its name: its clones run there
    node_id: str
    image: str
    image_digest: str
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    size_bytes: int  # what its files take on the node
    state: str  # creating, ready
    clones: list[str] = []  # the machines that continue from it (not destroyed), by name
    created_at: float


# -- between controllers and nodes ----------------------------------------------------------------


class NodeMachineSnapshot(Request):
    snapshot_id: str = Field(min_length=1, max_length=64)


class NodeMachineSnapshotTaken(View):
    size_bytes: int
