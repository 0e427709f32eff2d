"""The contract between the node agent and a storage backend.

A backend holds volumes and their snapshots by the ids the controller gives them. It never
decides who may do what (the controller has checked that) nor where (the scheduler has); it
keeps the bytes, and says how a sandbox reaches them (`attach_source`). The local backend is a
directory of raw sparse files; a backend on shared storage (Ceph RBD) would return an RBD image
name instead of a path, which QEMU opens itself and a container reaches through `rbd map`.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

Fs = Literal["ext4", "none"]


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    id: str
    size_bytes: int  # what the workload sees (the device's size)
    fs: Fs
    used_bytes: int  # what it takes on the backend now (allocated, shared extents counted once)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    id: str
    volume_id: str
    size_bytes: int  # the volume's size when it was taken
    used_bytes: int  # allocated by the snapshot alone


@dataclass(frozen=True, slots=True)
class AttachSource:
    """How a sandbox reaches a volume: a raw file for the local backend."""

    kind: Literal["file"]
    path: str


class Backend(Protocol):
    name: str

    def create(self, volume_id: str, size_bytes: int, fs: Fs) -> VolumeInfo: ...
    def delete(self, volume_id: str) -> None: ...  # and its snapshots; idempotent
    def info(self, volume_id: str) -> VolumeInfo: ...  # NotFound if absent
    def volumes(self) -> list[VolumeInfo]: ...  # every volume it holds
    def grow(self, volume_id: str, size_bytes: int) -> VolumeInfo: ...  # detached volumes
    def snapshot(self, volume_id: str, snapshot_id: str) -> SnapshotInfo: ...  # point in time
    def delete_snapshot(self, volume_id: str, snapshot_id: str) -> None: ...  # idempotent
    def snapshots(self, volume_id: str) -> list[SnapshotInfo]: ...
    def restore(self, volume_id: str, snapshot_id: str) -> VolumeInfo: ...  # detached volumes
    def clone(self, volume_id: str, new_id: str, snapshot_id: str = "") -> VolumeInfo: ...
    def export(self, volume_id: str, snapshot_id: str = "") -> Iterator[bytes]: ...
    def import_(self, new_id: str, chunks: Iterable[bytes], max_bytes: int) -> VolumeInfo: ...
    def attach_source(self, volume_id: str) -> AttachSource: ...
    def capacity(self) -> tuple[int, int]: ...  # (bytes promised to volumes, bytes it can hold)
