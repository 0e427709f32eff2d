"""One node agent per network namespace.

A node agent owns its namespace's networking: the bridges `hn-<vni>` (two controllers number
their networks from the same start, so their bridges have the same names), and the nftables
tables `inet hutch` and `bridge hutch`, which it makes whole and then changes. A second agent
in the same namespace would silently take those over, and the first one's published ports and
rules would break at random. So an agent claims the namespace it manages before it touches
anything, and holds the claim for its whole life.

The claim is an flock on `/run/hutch/netns/net-<inode>.lock`, the inode being the network
namespace's own (the same for every process in it, whatever path it was entered by). The file
holds the holder's pid and state directory, for the refusal to name. The lock goes with the
descriptor, which no child inherits (close-on-exec): when the agent dies, however it dies
(kill -9 included), the claim is gone and the next agent takes it; nothing stale is left.
"""

import contextlib
import fcntl
import os
from pathlib import Path

from hutch.model.errors import Conflict, Unavailable

# tmpfs, like the uid leases in /run/hutch/ids: emptied at boot, when no agent runs either.
CLAIM_DIR = Path("/run/hutch/netns")


def namespace_inode(netns: Path | None = None) -> int:
    """The network namespace at `netns` (a path like /run/netns/NAME), or this thread's."""
    return os.stat(netns or "/proc/thread-self/ns/net").st_ino


class NamespaceClaim:
    """This process manages the networks of one network namespace, until `release`."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # the lock goes with the last descriptor
            self._fd = -1


def claim(netns: Path | None, state_dir: Path) -> NamespaceClaim:
    """Claim the network namespace at `netns` (None: this thread's) for an agent whose state is
    in `state_dir`; Conflict, naming the holder, if another process holds it."""
    try:
        CLAIM_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = CLAIM_DIR / f"net-{namespace_inode(netns)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise Unavailable(
            f"cannot claim this network namespace for the node agent ({CLAIM_DIR}): {e.strerror}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise Conflict(
            f"another hutch agent{holder} manages the networks of this network namespace; "
            "run one agent per namespace"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{state_dir}\n".encode(), 0)
    return NamespaceClaim(fd, path)


def _holder(fd: int) -> str:
    """' (pid N, state dir D)' as the holder wrote it, or '' if it has not written it yet."""
    try:
        pid, state_dir = os.pread(fd, 4096, 0).decode().split("\n")[:2]
        return f" (pid {int(pid)}, state dir {state_dir})" if state_dir else ""
    except (OSError, ValueError):
        return ""
