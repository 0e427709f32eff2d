"""What tests share that is not a fixture: plain modules, imported by name (fixtures stay in the
conftests, where pytest finds them; no test imports from a conftest).

- `cli`: the one way to run the `hutch` CLI, and the environment it runs in.
- `api`: the real controller app in-process, with a simulated node.
- `runtime`: sandbox specs and drivers for the runtime tests.
"""

import os
import socket
from pathlib import Path

# Guest artifacts, busybox roots and image caches built once and kept between runs.
CACHE_DIR = Path(os.environ.get("HUTCH_CACHE_DIR", "/var/cache/hutch"))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
