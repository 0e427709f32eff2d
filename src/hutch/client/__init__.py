"""The Python SDK: `Client` (blocking) and `AsyncClient` (asyncio) over the controller's HTTP API.

    from hutch.client import Client, NotFound

    with Client() as client:                 # HUTCH_URL/HUTCH_TOKEN, else the current context
        m = client.machines.run("busybox", ["sh", "-c", "echo hi"], runtime="container")
        print(client.machines.wait(m).exit_code)

Wire types (MachineView, LogLine, ...) come from `hutch.wire`; the errors below subclass both
`ApiError` and the matching `hutch.model.errors` class.

Each name is imported on first use (PEP 562), so a program that needs one piece (the CLI's
`hutch ps` needs `hutch.client.plain`) does not pay for the others: the wire models (pydantic),
asyncio, websockets.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hutch.client._core import (
        ExecOptions,
        MachineOptions,
        MachineRef,
        QuotaLimits,
        StreamOptions,
        log_bytes,
    )
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

_WHERE = {
    "ExecOptions": "_core",
    "MachineOptions": "_core",
    "QuotaLimits": "_core",
    "StreamOptions": "_core",
    "MachineRef": "_core",
    "log_bytes": "_core",
    "AsyncClient": "aio",
    "AsyncListing": "aio",
    "Client": "sync",
    "AsyncAttachSession": "exec",
    "AsyncExecSession": "exec",
    "AttachSession": "exec",
    "ExecEnd": "exec",
    "ExecResult": "exec",
    "ExecSession": "exec",
}  # fmt: skip; every other public name is an error class, from hutch.client.errors

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
    "ExecOptions",
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
    "QuotaLimits",
    "StartFailed",
    "StreamOptions",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "Unreachable",
    "WaitTimeout",
    "log_bytes",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'hutch.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hutch.client.{_WHERE.get(name, 'errors')}"), name)
    globals()[name] = value  # once: later lookups find it directly
    return value
