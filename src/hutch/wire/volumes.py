"""Volumes and their snapshots: the API's shapes, and what controllers and nodes say of them."""

from typing import Literal

from pydantic import Field

from hutch.wire.common import INT64_MAX, Request, View

Size = Field(ge=0, le=INT64_MAX, description="bytes (a whole number of 4 KiB blocks)")


class VolumeCreate(Request):
    name: str = Field(min_length=1, max_length=63)
    size_bytes: int = Field(
        0, ge=0, le=INT64_MAX,
        description="bytes (a whole number of 4 KiB blocks); with `source`: at least the "
        "source's size, 0 for the same",
    )  # fmt: skip
    fs: Literal["ext4", "none"] = Field("ext4", description="none: a raw block device")
    node: str = Field("", max_length=255, description="a node's name or id; default: the ready "
                      "node with the most free space in its volume pool")  # fmt: skip
    source: str = Field(
        "", max_length=127,
        description="a fork: VOLUME (its data now) or VOLUME@SNAPSHOT (names or ids), made on "
        "the source's node",
    )  # fmt: skip


class VolumeExtend(Request):
    size_bytes: int = Size


class SnapshotCreate(Request):
    name: str = Field("", max_length=63, description="default: a name from the time")


class VolumeView(View):
    id: str
    name: str
    project: str
    size_bytes: int
    fs: str
    state: str  # creating, available, attached, deleting, error
    node: str | None  # its name
    node_id: str | None
    machine: str | None = None  # the machine attached (its name)
    machine_id: str | None = None
    used_bytes: int = 0
    error: str = ""
    snapshots: int = 0
    untrusted: bool = Field(
        False,
        description="its file system may be a tenant's craft (imported, written by a micro-VM, "
        "or from such a volume): containers do not take it, micro-VMs do",
    )
    created_at: float
    # What its node is doing with it ("snapshotted", "extended", ...; '' for nothing): another
    # operation meanwhile is refused (409 "volume NAME is being snapshotted").
    operation: str = ""


class SnapshotView(View):
    id: str
    name: str
    volume: str  # its name
    volume_id: str
    size_bytes: int
    used_bytes: int = 0
    untrusted: bool = False  # its volume's when taken
    frozen: bool = Field(
        False,
        description="taken with the file system frozen by the machine that had the volume "
        "(application-consistent); else point-in-time (crash-consistent) or of a detached volume",
    )
    created_at: float


# -- between controllers and nodes ----------------------------------------------------------------


class NodeVolumeCreate(Request):
    id: str = Field(min_length=1, max_length=64)
    size_bytes: int = Size
    fs: Literal["ext4", "none"] = "ext4"


class NodeVolumeClone(Request):
    id: str = Field(min_length=1, max_length=64, description="the new volume's")
    snapshot: str = Field("", max_length=64, description="a snapshot of the source; '': its data")


class NodeSnapshotCreate(Request):
    id: str = Field(min_length=1, max_length=64)
    # The running sandbox that has the volume, and where: the snapshot is taken inside its
    # freeze of that file system (Driver.freeze). Empty: not frozen.
    sandbox: str = Field("", max_length=64)
    target: str = Field("", max_length=200)


class NodeVolumeInfo(View):
    id: str
    size_bytes: int
    fs: str
    used_bytes: int


class NodeSnapshotInfo(View):
    id: str
    volume_id: str
    size_bytes: int
    used_bytes: int
    frozen: bool = False  # taken inside the sandbox's freeze


class NodeVolumeCapacity(View):
    promised_bytes: int  # given to volumes
    total_bytes: int  # what the pool can hold
