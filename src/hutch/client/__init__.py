"""The Python SDK: `Client` (blocking) and `AsyncClient` (asyncio) over the controller's HTTP API.

    from hutch.client import Client, NotFound

    with Client() as client:                 # HUTCH_URL/HUTCH_TOKEN, else the current context
        m = client.machines.run("busybox", ["sh", "-c", "echo hi"], runtime="container")
        print(client.machines.wait(m).exit_code)

Wire types (MachineView, LogLine, ...) come from `hutch.wire`; the errors below subclass both
`ApiError` and the matching `hutch.model.errors` class.
"""

from hutch.client._core import MachineOptions, MachineRef, log_bytes
from hutch.client.aio import AsyncClient, AsyncListing
from hutch.client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    Invalid,
    NoCapacity,
    NoConnection,
    NotFound,
    PullFailed,
    QuotaExceeded,
    StartFailed,
    Unauthenticated,
    Unavailable,
    Unreachable,
    Unsupported,
    WaitTimeout,
)
from hutch.client.exec import (
    AsyncAttachSession,
    AsyncExecSession,
    AttachSession,
    ExecEnd,
    ExecResult,
    ExecSession,
)
from hutch.client.sync import Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncAttachSession",
    "AsyncExecSession",
    "AsyncListing",
    "AttachSession",
    "Client",
    "Conflict",
    "ExecEnd",
    "ExecResult",
    "ExecSession",
    "Forbidden",
    "Invalid",
    "MachineOptions",
    "MachineRef",
    "InsufficientStorage",
    "NoCapacity",
    "NoConnection",
    "NotFound",
    "PullFailed",
    "QuotaExceeded",
    "StartFailed",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "Unreachable",
    "WaitTimeout",
    "log_bytes",
]
