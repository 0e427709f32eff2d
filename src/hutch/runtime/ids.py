"""Host-wide leases of numeric ids (a QEMU's uid, a container's host uid range).

Every hutch process on a host (`hutch sandbox run`, the node agent, several of either) takes ids
from the same pool, so one file per id lives in a host-wide directory. An id is in use while

- its file is flock'ed: the sandbox's own long-lived process (QEMU, the container's init)
  inherits the locked file description and holds it for its whole life, so an id comes back
  when that process dies, however it dies, and also when a hutch process dies half way through
  a launch; and
- the owner recorded in the file is alive: the sandbox's process may be hostile and could drop
  the lock it holds, but it cannot write the record (its descriptor is read-only).
"""

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from hutch.model.errors import Unavailable
from hutch.runtime.procs import ProcessRef

# tmpfs: emptied at boot, when no sandbox (and no lock) survives either.
ID_DIR = Path("/run/hutch/ids")


class Lease:
    """One id, locked. Pass `fd` to the sandbox's process, then `bind` it to that process."""

    def __init__(self, ident: int, fd: int, record_fd: int) -> None:
        self.id = ident
        self.fd = fd  # read-only, holds the lock: what the sandbox's process inherits
        self._record_fd = record_fd

    def bind(self, owner: ProcessRef, home: Path | None = None) -> None:
        """Record `owner` (which holds `fd` by now) and the sandbox directory it belongs to, and
        drop this process's descriptors."""
        os.ftruncate(self._record_fd, 0)
        text = f"{owner.pid} {owner.start_ticks}" + (f"\n{home}" if home is not None else "")
        os.pwrite(self._record_fd, text.encode(), 0)
        self.close()

    def close(self) -> None:
        """Drop this process's descriptors; the lock stays with whoever inherited `fd`."""
        for fd in (self.fd, self._record_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd = self._record_fd = -1


@dataclass(frozen=True, slots=True)
class Holder:
    """A live owner of an id, and the sandbox directory it was bound to (if it was told)."""

    id: int
    owner: ProcessRef
    home: Path | None


@dataclass(frozen=True, slots=True)
class IdPool:
    """`count` ids from `base`, `step` apart (a range of `step` ids each), named `name`."""

    name: str
    base: int
    count: int
    step: int = 1
    directory: Path = ID_DIR

    def take(self) -> Lease:
        """The lowest free id; Unavailable when all are in use."""
        pool = self.directory / self.name
        pool.mkdir(parents=True, exist_ok=True, mode=0o700)
        for n in range(self.count):
            ident = self.base + n * self.step
            path = pool / str(ident)
            record = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            lock = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock)
                os.close(record)
                continue
            owner = _owner(os.pread(record, 64, 0))
            if owner is not None and owner.alive():  # it dropped its lock, not its id
                os.close(lock)
                os.close(record)
                continue
            os.ftruncate(record, 0)
            return Lease(ident, lock, record)
        raise Unavailable(f"all {self.count} {self.name} ids from {self.base} are in use")

    def holders(self) -> list[Holder]:
        """Every id of this pool whose recorded owner lives (whichever hutch process took it)."""
        pool = self.directory / self.name
        found = []
        for path in sorted(pool.iterdir()) if pool.is_dir() else ():
            try:
                ident, data = int(path.name), path.read_bytes()[:4096]
            except (ValueError, OSError):
                continue
            owner = _owner(data)
            if owner is not None and owner.alive():
                _, _, home = data.partition(b"\n")
                found.append(Holder(ident, owner, Path(os.fsdecode(home)) if home else None))
        return found


def _owner(data: bytes) -> ProcessRef | None:
    with contextlib.suppress(ValueError):
        pid, start = (int(x) for x in data.partition(b"\n")[0].split())
        return ProcessRef(pid, start)
    return None
