"""A sandbox's directory on the host and its persisted record.

Everything a driver knows about a sandbox is in `record.json`, written atomically (temp file,
fsync, rename) before the driver acts on it, so a host process that dies at any point leaves a
record a new driver can act on: re-adopt the sandbox, or clean it up.
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hutch.model.errors import Conflict, Invalid
from hutch.model.network import Attachment, PortMapping
from hutch.model.sandbox import (
    ExitStatus,
    ProcessSpec,
    Resources,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    User,
    VolumeMount,
)
from hutch.runtime import mounts
from hutch.runtime.procs import ProcessRef

UNIX_PATH_MAX = 107
LONGEST_NAME = "console.sock"


@dataclass(slots=True)
class SandboxRecord:
    """The mutable truth about one sandbox, as persisted."""

    spec: SandboxSpec
    runtime: str
    state: SandboxState = SandboxState.CREATED
    pid: int = 0
    pid_start: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    exit: ExitStatus | None = None
    details: dict[str, str] = field(default_factory=dict)

    @property
    def process(self) -> ProcessRef | None:
        return ProcessRef(self.pid, self.pid_start) if self.pid else None

    @property
    def finished(self) -> bool:
        return self.state in (SandboxState.EXITED, SandboxState.FAILED)

    def info(self) -> SandboxInfo:
        return SandboxInfo(
            id=self.spec.id,
            runtime=self.runtime,
            state=self.state,
            pid=self.pid if not self.finished else 0,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit=self.exit,
            resources=self.spec.resources,
            details=dict(self.details),
            root_paths=tuple(p for p in (self.spec.rootfs, self.spec.root_disk) if p),
        )

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        return out

    @staticmethod
    def from_json(data: dict[str, Any]) -> "SandboxRecord":
        spec = dict(data["spec"])
        proc = dict(spec.pop("process"))
        proc["user"] = User(**{**proc["user"], "groups": tuple(proc["user"]["groups"])})
        spec["process"] = ProcessSpec(
            **{**proc, "args": tuple(proc["args"]), "env": tuple(proc["env"])}
        )
        spec["resources"] = Resources(**spec["resources"])
        spec["networks"] = tuple(
            Attachment(**{**a, **{k: tuple(a[k]) for k in ("egress_allow", "dns", "search")}})
            for a in spec.get("networks", ())
        )
        spec["ports"] = tuple(PortMapping(**p) for p in spec.get("ports", ()))
        spec["volumes"] = tuple(VolumeMount(**v) for v in spec.get("volumes", ()))
        exit_ = data.get("exit")
        return SandboxRecord(
            spec=SandboxSpec(**spec),
            runtime=data["runtime"],
            state=SandboxState(data["state"]),
            pid=data["pid"],
            pid_start=data["pid_start"],
            created_at=data["created_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            exit=ExitStatus(**exit_) if exit_ else None,
            details=dict(data.get("details", {})),
        )


class SandboxDir:
    """`<root>/<id>/`: the record, sockets and logs, and a lock held by the watching process."""

    def __init__(self, root: Path, sandbox_id: str) -> None:
        self.path = root / sandbox_id
        self._lock_fd: int | None = None

    @property
    def record_file(self) -> Path:
        return self.path / "record.json"

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self) -> None:
        try:
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            raise Conflict(f"sandbox {self.path.name} already exists") from None

    def save(self, record: SandboxRecord) -> None:
        data = json.dumps(record.to_json(), indent=1).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".record-")
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.record_file)
        dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself must survive a crash
        finally:
            os.close(dfd)

    def load(self) -> SandboxRecord:
        return SandboxRecord.from_json(json.loads(self.record_file.read_text()))

    def try_lock(self) -> bool:
        """Take the watcher lock; False if another live process watches this sandbox."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())  # for messages only: the flock is the truth
        self._lock_fd = fd
        return True

    def watcher_pid(self) -> int | None:
        """The pid of the process that holds (or last held) the lock."""
        try:
            return int((self.path / "lock").read_text() or 0) or None
        except (OSError, ValueError):
            return None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        self.unlock()
        if self.path.exists():
            mounts.unmount_under(self.path)  # never delete inside a volume mounted there
        shutil.rmtree(self.path, ignore_errors=True)


def check_state_root(root: Path) -> Path:
    """Create the root; refuse one whose sockets would not fit in a unix socket address."""
    longest = len(str(root.resolve())) + 1 + 40 + 1 + len(LONGEST_NAME)
    if longest > UNIX_PATH_MAX:
        raise Invalid(
            f"state directory {root} is too long: sandbox sockets under it would exceed the "
            f"{UNIX_PATH_MAX}-byte unix socket limit; use a shorter path"
        )
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        root.chmod(0o700)  # sockets inside are the sandboxes' control channels: root only
    return root
