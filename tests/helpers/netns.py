"""Network namespaces for the test process itself.

One node agent manages one network namespace (src/hutch/network/claim.py): a second agent there
is refused. The test session's shared `hutch up` (tests/controller.py) has the session's
namespace; a test that runs a node agent of its own (`hutch up`, `hutch agent`) runs it, and
talks to it, from a namespace of its own (`own_network_namespace`). Namespaces are per thread:
the test's thread moves there for the block, and what it starts meanwhile (processes, threads,
sockets) lives there too.
"""

import contextlib
import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def enter_new_network_namespace() -> None:
    """This thread in a new network namespace whose loopback is up (127.0.0.1 and ::1 work);
    the processes and threads it starts from now on are in it too."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


@contextlib.contextmanager
def own_network_namespace() -> Iterator[None]:
    """This thread in a new network namespace for the block, then back where it was. The
    namespace goes when its last process (and socket) does."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_new_network_namespace()
        yield
    finally:
        try:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's namespace")
        finally:
            os.close(back)
