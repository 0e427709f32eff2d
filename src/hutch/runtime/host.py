"""Facts about this host that the drivers size themselves by, and the host-wide options both
backends take alike."""

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.ids import ID_DIR
from hutch.runtime.wiring import NetworkWiring

HOST_RESERVE_MIB = 512  # kept for the host itself: no sandbox may ask for all of it


def memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def cpus() -> int:
    return os.cpu_count() or 1


def tsc_khz() -> int:
    """The host TSC rate: a TCG guest cannot calibrate its own and hangs in a quarter of boots."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


@dataclass(frozen=True, slots=True)
class HostOptions:
    """What both backends take from the host alike."""

    cgroup_parent: str = "hutch"  # every sandbox's cgroup goes under it
    id_dir: Path = ID_DIR  # host-wide: every hutch process of the host leases uids there
    network: NetworkWiring | None = None  # None: sandboxes with networks are refused

    async def unplug(self, sandbox_id: str) -> None:
        """Undo the sandbox's wiring, if this host wires any."""
        if self.network is not None:
            await asyncio.to_thread(self.network.unplug, sandbox_id)
