"""Space on the unpack staging file system (a tmpfs), reserved before it is used.

A micro-VM's root is unpacked under `unpack_staging` on its way to a disk. Preparations running
at once (the agent's threads, a `hutch sandbox run` in another process) must not together take
more than that file system holds (each would fail with ENOSPC), nor more than hutch's share of
the host's memory (a tmpfs is memory). So each reserves what it expects to unpack before it
starts and grows its reservation before it writes past it; what cannot be reserved is unpacked
on the cache's disk instead.

The reservations of every process of one user live in `<staging>/.hutch-<uid>/`: for each,
`<id>.lock`, locked (flock) by its owner for as long as it holds the reservation and holding its
numbers, and `<id>/`, the directory it unpacks into. They are read and changed under
`ledger.lock`. A reservation whose lock is free belongs to a process that died: whoever sees it
first removes it and its directory.
"""

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hutch.images.unpack import Budget
from hutch.model.errors import Unavailable
from hutch.model.units import format_bytes

log = logging.getLogger(__name__)

# tmpfs gives a file's data whole pages, and a long symlink target one: an entry is charged a
# page on top of its bytes, so a charge is never less than what the file system really uses.
PAGE = 4096
GROW_STEP = 16 << 20  # a reservation grows by this much more than it needs: growing is rare
_LEDGER = "ledger.lock"
_LOCK = ".lock"


class StagingFull(Unavailable):
    """The staging file system, or hutch's share of it, cannot hold more now."""


@dataclass(frozen=True, slots=True)
class Staging:
    """A file system where disk-only roots are unpacked (ideally a tmpfs), and how much of it the
    preparations of all hutch processes on the host may hold at once."""

    path: Path
    max_bytes: int

    @classmethod
    def memory_share(cls, path: Path, share: float) -> "Staging":
        """`path`, with at most `share` of the host's memory held in it at once."""
        return cls(path, int(_meminfo("MemTotal") * share))

    def reserve(self, nbytes: int) -> "Reservation | None":
        """A reservation of `nbytes`, with an empty directory to unpack into; None when they do
        not fit now (hutch's share, the file system's free space, or half the memory available
        would be exceeded), or the staging directory cannot be used."""
        area = self._area()
        if area is None:
            return None
        with _ledger(area):
            claims = _claims(area)
            if not self._fits(area, claims, nbytes, nbytes):
                return None
            rid = f"{os.getpid()}-{secrets.token_hex(6)}"
            fd = os.open(area / f"{rid}{_LOCK}", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o600)  # fmt: skip
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                _record(fd, nbytes, 0)
                os.mkdir(area / rid)
                os.chmod(area / rid, 0o755)  # the usual root mode, whatever the umask
            except BaseException:
                os.unlink(area / f"{rid}{_LOCK}")
                os.close(fd)
                raise
        return Reservation(self, area, rid, fd, nbytes)

    def _fits(self, area: Path, others: dict[str, tuple[int, int]], reserved: int,
              pending: int) -> bool:  # fmt: skip
        """Whether a reservation of `reserved` bytes, `pending` of them not yet used, fits beside
        `others` (id -> (reserved, used)). What others have used is already gone from the free
        space; what they reserved beyond that may still come."""
        held = sum(r for r, _ in others.values()) + reserved
        coming = sum(max(r - u, 0) for r, u in others.values()) + pending
        st = os.statvfs(area)
        free = st.f_bavail * st.f_frsize
        return held <= self.max_bytes and coming <= free and coming <= _meminfo("MemAvailable") // 2

    def _area(self) -> Path | None:
        """This user's private directory under the staging path (made once), or None. The
        staging path itself (/dev/shm: everyone's) is left as it is."""
        area = self.path / f".hutch-{os.geteuid()}"
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(area, 0o700)
            st = os.lstat(area)
        except OSError as e:
            log.warning("cannot unpack under %s (%s): on the cache's disk instead", self.path,
                        e.strerror)  # fmt: skip
            return None
        # Someone else's directory (or a symlink) planted there must not receive our trees.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            log.warning("%s is not hutch's private directory: unpacking on the cache's disk",
                        area)  # fmt: skip
            return None
        return area


class Reservation:
    """Space held on a staging file system, and the directory (`scaffold`) that may use it.
    Held until `release` (or the end of a `with` block); a process that dies gives it back."""

    def __init__(self, staging: Staging, area: Path, rid: str, fd: int, reserved: int) -> None:
        self.staging = staging
        self.scaffold = area / rid  # empty at first (mode 0755); removed on release
        self.reserved = reserved
        self._area = area
        self._rid = rid
        self._fd = fd

    def cover(self, used: int, need: int) -> None:
        """Make sure `need` bytes are reserved, `used` of them used so far; StagingFull when the
        reservation cannot grow that far (the caller then stops using the staging)."""
        if need <= self.reserved:
            return
        with _ledger(self._area):
            others = _claims(self._area, skip=self._rid)
            for want in (need + GROW_STEP, need):
                if self.staging._fits(self._area, others, want, want - used):
                    _record(self._fd, want, used)
                    self.reserved = want
                    return
        raise StagingFull(
            f"{self.staging.path} cannot hold {format_bytes(need)} for this image now"
        )

    def budget(self, max_bytes: int) -> Budget:
        """An image's unpacking budget whose writes must also fit this reservation."""
        return _StagedBudget(max_bytes, self)

    def release(self) -> None:
        """Remove the scaffold and give the space back (idempotent)."""
        if self._fd < 0:
            return
        shutil.rmtree(self.scaffold, ignore_errors=True)  # held until the space is free again
        with _ledger(self._area):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._area / f"{self._rid}{_LOCK}")
            os.close(self._fd)  # the lock goes with it
        self._fd = -1

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class _StagedBudget(Budget):
    """An image's limits, whose bytes, plus a page per entry, are also charged to a
    reservation as they come (before they are written)."""

    def __init__(self, max_bytes: int, reservation: Reservation) -> None:
        super().__init__(max_bytes)
        self.reservation = reservation

    def _charged(self) -> int:
        return self.bytes + self.entries * PAGE

    def check_bytes(self, n: int) -> None:
        super().check_bytes(n)
        self.reservation.cover(self._charged(), self._charged() + n)

    def take_entry(self) -> None:
        super().take_entry()
        self.reservation.cover(self._charged() - PAGE, self._charged())


def _meminfo(key: str) -> int:
    """A /proc/meminfo figure in bytes (0 when it is not there)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _ledger(area: Path) -> Iterator[None]:
    fd = os.open(area / _LEDGER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _claims(area: Path, skip: str = "") -> dict[str, tuple[int, int]]:
    """The live reservations under `area` but `skip`: id -> (reserved, used). Those of dead
    processes, and directories nobody holds, are removed. Call under the ledger lock."""
    claims: dict[str, tuple[int, int]] = {}
    for name in os.listdir(area):
        if not name.endswith(_LOCK) or name in {_LEDGER, f"{skip}{_LOCK}"}:
            continue
        rid = name.removesuffix(_LOCK)
        fd = os.open(area / name, os.O_RDWR | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its owner holds it
                claims[rid] = _numbers(fd)
                continue
            log.info("removing the unpack staging %s left by a process that ended", rid)
            shutil.rmtree(area / rid, ignore_errors=True)
            os.unlink(area / name)
        finally:
            os.close(fd)
    for name in os.listdir(area):
        if name not in claims and name != skip and (area / name).is_dir():
            shutil.rmtree(area / name, ignore_errors=True)  # its owner died as it made it
    return claims


def _record(fd: int, reserved: int, used: int) -> None:
    data = f"{reserved} {used}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _numbers(fd: int) -> tuple[int, int]:
    reserved, used = os.pread(fd, 64, 0).split()  # written whole under the ledger lock
    return int(reserved), int(used)
