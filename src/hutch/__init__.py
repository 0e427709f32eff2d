"""hutch: a self-hosted cloud controller where every workload runs in its own micro-VM.

`hutch.Client` and `hutch.AsyncClient` are the SDK (see hutch.client). They are imported on
first use, so `import hutch` stays cheap for the CLI and the server; their types are declared in
`__init__.pyi` (SPEC 1's lazy loading), which also keeps the server's layers free of the SDK.
"""

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        return getattr(importlib.import_module("hutch.client"), name)
    raise AttributeError(f"module 'hutch' has no attribute {name!r}")
