"""Volumes as the controller keeps them: a project's persistent disks on nodes, and their
snapshots. What holds the bytes is a node's storage backend (`hutch.storage.backend`)."""

from dataclasses import dataclass
from enum import StrEnum

from hutch.model import units
from hutch.model.errors import Invalid

GIB = 1 << 30
FS = ("ext4", "none")
MIN_SIZE = 16 << 20  # room for ext4 and its journal
BLOCK = 4096  # sizes are whole blocks of it
MAX_SIZE = 16 << 40  # 16 TiB: a sparse file; far beyond a node is refused by the node


class VolumeState(StrEnum):
    CREATING = "creating"  # its node is making it
    AVAILABLE = "available"  # detached, ready
    ATTACHED = "attached"  # a machine that is not destroyed has it
    DELETING = "deleting"  # its node is deleting it
    ERROR = "error"  # its node failed it: `error` says why


def parse_size(text: str) -> int:
    """Bytes of `10G`, `512M`, `1T`, or `10` (GiB when no unit): binary units, as `qemu-img`
    and Docker take them. Invalid, saying why, for anything else."""
    return units.parse_size(text, default_unit="g")


def check_size(size_bytes: int) -> int:
    if size_bytes <= 0:
        raise Invalid(f"a volume's size must be more than 0 bytes, not {size_bytes}")
    if size_bytes < MIN_SIZE:
        raise Invalid(f"a volume's size is at least 16M ({MIN_SIZE} bytes), not {size_bytes}")
    if size_bytes > MAX_SIZE:
        raise Invalid(f"a volume's size is at most 16T, not {size_bytes} bytes")
    if size_bytes % BLOCK:
        raise Invalid(f"a volume's size is a whole number of 4 KiB blocks, not {size_bytes}")
    return size_bytes


def check_fs(fs: str) -> str:
    if fs not in FS:
        raise Invalid(f"filesystem {fs!r} is not one of {', '.join(FS)} (none: a raw device)")
    return fs


def gib(size_bytes: int) -> float:
    return size_bytes / GIB


@dataclass(frozen=True, slots=True)
class Volume:
    id: str  # "v-..."
    project_id: str
    name: str  # unique in the project
    size_bytes: int
    fs: str  # "ext4" | "none"
    state: VolumeState
    node_id: str | None  # where its bytes are (None only while it is being placed)
    created_at: float
    machine_id: str | None = None  # the machine it is attached to (one at a time), if any
    used_bytes: int = 0  # what it takes on its node (as the node said last)
    error: str = ""
    # Its file system may have been crafted by a tenant: it was imported, or attached
    # read-write to a micro-VM (root in a guest writes raw blocks), or forked or restored from
    # such a volume or snapshot. The node's own kernel never mounts such a file system: a
    # container (whose volumes the node mounts) does not take it; a micro-VM does.
    untrusted: bool = False
    # The operation its node is doing ("extended", "snapshotted", ...: `volume X is being
    # <operation>`), taken under the project's lock, until `operation_until` (a time.time()):
    # a controller that died mid-operation holds it no longer than that.
    operation: str = ""
    operation_until: float = 0.0

    def busy(self, now: float) -> bool:
        return bool(self.operation) and now < self.operation_until


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str  # "vs-..."
    volume_id: str
    project_id: str
    name: str  # unique among the volume's snapshots
    size_bytes: int  # the volume's size when it was taken
    created_at: float
    used_bytes: int = 0  # what it alone takes on the node
    untrusted: bool = False  # its volume's, when taken (see Volume.untrusted)
    # Taken with the file system frozen by the machine that had the volume (application-
    # consistent); else a point-in-time copy (crash-consistent), or of a detached volume.
    frozen: bool = False
