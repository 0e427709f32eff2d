"""One sandbox's control group, on cgroup v1 (one hierarchy per controller) or v2 (unified).

The micro-VM driver creates the group and moves qemu into it before qemu runs; crun creates its own
from the OCI spec at the same place, and both read stats and OOM kills from here.
"""

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from hutch.model.errors import Unavailable
from hutch.model.sandbox import Stats

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
CFS_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int
    pids: int
    cpus: float  # CFS quota in cores


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the controllers are mounted on this host."""

    v1: dict[str, Path]  # controller -> mount point, for cgroup v1 controllers
    v2: Path | None  # unified mount point when memory is managed by cgroup v2
    # A cgroup2 mount beside v1 controllers ("hybrid"): crun refuses to run until it is hidden.
    hybrid_mount: Path | None = None

    @staticmethod
    def detect(mountinfo: str | None = None) -> "Layout":
        text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
        v1: dict[str, Path] = {}
        v2: Path | None = None
        for line in text.splitlines():
            fields = line.split(" - ")
            if len(fields) != 2:
                continue
            mount_point = Path(fields[0].split()[4])
            fstype, _source, options = fields[1].split()[:3]
            if fstype == "cgroup":
                for opt in options.split(","):
                    if opt in CONTROLLERS:
                        v1[opt] = mount_point
            elif fstype == "cgroup2":
                v2 = mount_point
        if "memory" in v1:
            return Layout(v1, None, v2)
        if v2 is not None and "memory" in _read(v2 / "cgroup.controllers", "").split():
            return Layout({}, v2)
        raise Unavailable("no memory cgroup controller is mounted: hutch cannot bound sandboxes")


class Cgroup:
    """The group `parent/name` under every controller."""

    def __init__(self, layout: Layout, parent: str, name: str) -> None:
        self.layout = layout
        self.relpath = f"{parent.strip('/')}/{name}"
        if layout.v2 is not None:
            self._dirs = {c: layout.v2 / self.relpath for c in CONTROLLERS}
        else:
            self._dirs = {c: layout.v1[c] / self.relpath for c in CONTROLLERS if c in layout.v1}

    def create(self, limits: Limits) -> None:
        """Make the group with `limits`; on failure nothing is left behind."""
        try:
            if self.layout.v2 is not None:
                self._create_v2(limits)
            else:
                self._create_v1(limits)
        except OSError as e:
            self.remove()
            raise Unavailable(f"cannot set up cgroup {self.relpath}: {e}") from e

    def _create_v1(self, limits: Limits) -> None:
        for path in set(self._dirs.values()):
            path.mkdir(parents=True, exist_ok=True)
        mem = self._dirs["memory"]
        (mem / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        swap = mem / "memory.memsw.limit_in_bytes"
        if swap.exists():  # no swapping past the limit either
            swap.write_text(str(limits.memory_bytes))
        if "pids" in self._dirs:
            (self._dirs["pids"] / "pids.max").write_text(str(limits.pids))
        if "cpu" in self._dirs:
            (self._dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (self._dirs["cpu"] / "cpu.cfs_quota_us").write_text(
                str(int(limits.cpus * CFS_PERIOD_US))
            )

    def _create_v2(self, limits: Limits) -> None:
        assert self.layout.v2 is not None
        path = self._dirs["memory"]
        # Controllers must be enabled in every ancestor's subtree_control.
        node = self.layout.v2
        for part in self.relpath.split("/"):
            with contextlib.suppress(OSError):
                (node / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            node = node / part
            node.mkdir(exist_ok=True)
        (path / "memory.max").write_text(str(limits.memory_bytes))
        with contextlib.suppress(FileNotFoundError):
            (path / "memory.swap.max").write_text("0")
        (path / "pids.max").write_text(str(limits.pids))
        (path / "cpu.max").write_text(f"{int(limits.cpus * CFS_PERIOD_US)} {CFS_PERIOD_US}")

    def procs_files(self) -> list[str]:
        """The files a child writes its pid to, to join the group before it execs."""
        return [str(p / "cgroup.procs") for p in sorted(set(self._dirs.values()))]

    def exists(self) -> bool:
        return self._dirs["memory"].exists()

    def memory_bytes(self) -> int:
        key = "memory.current" if self.layout.v2 else "memory.usage_in_bytes"
        return int(_read(self._dirs["memory"] / key, "0"))

    def anon_bytes(self) -> int:
        """Anonymous memory in the group: what reclaim cannot take back (no swap here)."""
        stat = _keyed(_read(self._dirs["memory"] / "memory.stat", ""))
        return stat.get("anon" if self.layout.v2 else "rss", 0)

    def memory_limit(self) -> int:
        key = "memory.max" if self.layout.v2 else "memory.limit_in_bytes"
        value = _read(self._dirs["memory"] / key, "0")
        return 0 if value == "max" else int(value)

    def cpu_ns(self) -> int:
        if self.layout.v2:
            stat = _keyed(_read(self._dirs["cpu"] / "cpu.stat", ""))
            return stat.get("usage_usec", 0) * 1000
        return int(_read(self._dirs.get("cpuacct", self._dirs["memory"]) / "cpuacct.usage", "0"))

    def pids(self) -> int:
        return int(_read(self._dirs["pids"] / "pids.current", "0")) if "pids" in self._dirs else 0

    def stats(self) -> Stats:
        return Stats(
            cpu_ns=self.cpu_ns(),
            memory_bytes=self.memory_bytes(),
            memory_limit_bytes=self.memory_limit(),
            pids=self.pids(),
        )

    def oom_kills(self) -> int:
        """Processes in the group killed by the OOM killer so far."""
        if self.layout.v2:
            return _keyed(_read(self._dirs["memory"] / "memory.events", "")).get("oom_kill", 0)
        return _keyed(_read(self._dirs["memory"] / "memory.oom_control", "")).get("oom_kill", 0)

    def prune(self) -> None:
        """Delete the group if nothing is left in it (else leave it as it is)."""
        for path in sorted(set(self._dirs.values()), key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()

    def remove(self, timeout: float = 5.0) -> None:
        """Kill what is left in the group and delete it. Idempotent."""
        deadline = time.monotonic() + timeout
        for path in sorted(set(self._dirs.values()), key=lambda p: -len(p.parts)):
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    for pid in _read(path / "cgroup.procs", "").split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                    if time.monotonic() > deadline:
                        raise Unavailable(
                            f"cgroup {path} is still busy after {timeout} s"
                        ) from None
                    time.sleep(0.02)


def _read(path: Path, default: str) -> str:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return default


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out
