"""Warm pools: the API's shapes."""

from typing import Literal

from pydantic import Field

from hutch.model.pool import MAX_READY
from hutch.wire.common import Request, View


class PoolSet(Request):
    """A pool of micro-VMs of one image and shape, made or updated (`PUT /v1/pools`): a
    `POST /v1/machines` of that image (the digest its name means when the pool was made),
    CPUs, memory, disk and runtime, on the default network with no ports, security groups,
    volumes or snapshot, takes a ready one instead of booting."""

    image: str = Field(min_length=1, max_length=512, description="name or digest")
    cpus: int = Field(1, ge=1, le=256)
    memory_mib: int = Field(128, ge=1, le=1 << 22)
    disk_mib: int = Field(0, ge=0, le=1 << 24, description="0: half the memory")
    runtime: Literal["microvm"] = "microvm"
    min_ready: int = Field(ge=0, le=MAX_READY, description="machines kept ready (0: none)")


class PoolView(View):
    id: str
    project: str
    image: str
    image_digest: str  # what its template ran: "" until it is made
    cpus: int
    memory_mib: int
    disk_mib: int
    runtime: str
    min_ready: int
    ready: int  # made and paused: a run takes one
    starting: int  # being made (or its template booting)
    state: str  # preparing, ready, failed, deleting
    error: str  # why it failed, or is not full
    node: str | None  # the node its machines are on (its template snapshot's), by name
    created_at: float
