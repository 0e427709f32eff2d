"""Machine snapshots: a running micro-VM's memory, devices and scratch disk, kept on its node,
that new machines continue from (`hutch run --from`). Volume snapshots are model.volume's."""

from dataclasses import dataclass
from enum import StrEnum


class SnapshotState(StrEnum):
    CREATING = "creating"  # its node is taking it
    READY = "ready"


@dataclass(frozen=True, slots=True)
class MachineSnapshot:
    id: str  # "s-..."
    project_id: str
    name: str  # unique in the project
    machine_id: str  # the machine it was taken of (which may be gone since)
    node_id: str  # where its files are: its clones run there
    # What a clone runs, exactly: the image by digest, the shape and the process it continues.
    image: str
    image_digest: str
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    command: tuple[str, ...] | None
    entrypoint: tuple[str, ...] | None
    env: tuple[str, ...]
    workdir: str
    user: str
    networks: tuple[str, ...]  # the ids of its NICs' networks, eth0 first: a clone has as many
    size_bytes: int  # what its files take on the node
    state: SnapshotState
    created_at: float
    pool: str = ""  # the warm pool whose template it is: only that pool sees it
