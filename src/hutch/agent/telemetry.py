"""The node's samples of what its sandboxes use, for the controller's metric history and
metering (`hutch.wire.telemetry`).

Every `sample_interval` the agent reads each sandbox's counters (`Reading`: its cgroup; its
disks through QMP; its NICs' counters) on a thread, turns them into one `MachineSample` per
sandbox and spools them on disk before it posts them; a post the controller acknowledged is
deleted. So a controller that is down, or an agent that restarts, loses nothing: the spool is
posted again, in order, with the same seqs (the spool is bounded: the oldest go first).

What a sample says is cumulative over the machine's generation and kept in `state.json` beside
the spool: the seq, the seconds it ran, and each counter's base. A counter that starts again
from zero (a micro-VM resumed is a new QEMU with a new TAP) adds what it had reached to its
base, so the sample's value never goes back. A sandbox the agent finds for the first time (a
lost state file) counts its running time from its record's `started_at`.
"""

import contextlib
import json
import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hutch.files import write_private
from hutch.model.errors import HutchError, Unauthenticated, Unavailable
from hutch.model.sandbox import DiskIO, Reading, Resources, SandboxState
from hutch.network.node import Traffic
from hutch.wire.telemetry import Disk, MachineSample, Net, NodeSample, Samples

log = logging.getLogger("hutch.agent.telemetry")
PER_POST = 200  # machine samples per post: well under the controller's body limit
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Observed:
    """One sandbox's reading, with what the node knows of it beside its driver."""

    sandbox: str  # "<machine>-<generation>"
    reading: Reading
    disks: Mapping[str, DiskIO]
    nics: Traffic | None  # None: it has no NIC (or they could not be read)


def machine_of(sandbox: str) -> tuple[str, int] | None:
    """The machine id and generation a sandbox id names (None: not a machine's)."""
    machine, _, generation = sandbox.rpartition("-")
    return (machine, int(generation)) if machine and generation.isdigit() else None


class Sampler:
    """Turns readings into samples, keeps their state and spool on disk, and posts them."""

    def __init__(
        self, directory: Path, limit: int, post: Callable[[Samples], Awaitable[None]]
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.limit = limit  # posts kept in the spool at most
        self.post = post
        self._state_file = self.dir / "state.json"
        # sandbox -> {"seq", "running_s", "time", "state", "raw": {counter: last raw value},
        # "base": {counter: added}, "limit": the memory limit last read, "vcpus", "memory_mib"}
        self.state: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.state = json.loads(self._state_file.read_text())
        self._next = 1 + max((int(p.stem) for p in self._spooled()), default=0)

    def _spooled(self) -> list[Path]:
        return sorted(
            (p for p in self.dir.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem)
        )

    def take(self, observed: Iterable[Observed], node: NodeSample) -> int:
        """Turn `observed` into samples and spool them (with the state they advance): how many
        machine samples. A sandbox that ended is sampled once more, as ended, then no more; so
        is one gone (destroyed) since the last turn, with what it had reached then."""
        now = node.time
        observed = list(observed)
        seen = {o.sandbox for o in observed}
        for gone in sorted(self.state.keys() - seen):
            st = self.state[gone]
            resources = Resources(cpus=st["vcpus"], memory_mib=st["memory_mib"])
            observed.append(
                Observed(gone, Reading(SandboxState.EXITED, resources, None, None), {}, None)
            )
        samples = [s for o in observed if (s := self._sample(o, now)) is not None]
        for gone in self.state.keys() - seen:  # their last sample is spooled now
            del self.state[gone]
        # The node's own sample goes even with no machine's.
        for start in range(0, max(len(samples), 1), PER_POST):
            batch = Samples(node=node, machines=samples[start : start + PER_POST])
            write_private(self.dir / f"{self._next}.json", batch.model_dump_json())
            self._next += 1
        write_private(self._state_file, json.dumps(self.state))
        for old in self._spooled()[: -self.limit]:
            log.warning("the controller took no samples for long: dropping %s", old.name)
            old.unlink(missing_ok=True)
        return len(samples)

    def _sample(self, o: Observed, now: float) -> MachineSample | None:
        ident = machine_of(o.sandbox)
        r = o.reading
        if ident is None or r.state is SandboxState.CREATED:
            return None
        ended = r.state in (SandboxState.EXITED, SandboxState.FAILED)
        st = self.state.get(o.sandbox)
        if st is None:
            if ended and r.started_at is None:
                return None  # it never started: nothing to say
            # One that ran and ended between two turns (echo hi) gets its one, ended, sample:
            # else it went unmetered, its start too.
            started = r.started_at or now
            end = (r.finished_at or now) if ended else now
            st = self.state[o.sandbox] = {
                "seq": 0, "running_s": max(end - started, 0.0), "time": now,
                "state": r.state.value, "raw": {}, "base": {}, "limit": 0,
                "vcpus": r.resources.cpus, "memory_mib": r.resources.memory_mib,
            }  # fmt: skip
        elif st["state"] == "ended":
            return None
        else:
            if st["state"] == SandboxState.RUNNING.value and r.state is SandboxState.RUNNING:
                st["running_s"] += max(now - st["time"], 0.0)
            st["time"] = now
            st["state"] = r.state.value
        counters = self._counters(st, o)
        st["seq"] += 1
        state = (
            "ended" if ended else ("running" if r.state is SandboxState.RUNNING else "suspended")
        )
        if ended:
            st["state"] = "ended"
        stats = r.stats
        if stats is not None:
            st["limit"] = stats.memory_limit_bytes
        sample = MachineSample(
            machine=ident[0],
            generation=ident[1],
            seq=st["seq"],
            time=now,
            state=state,
            vcpus=r.resources.cpus,
            memory_mib=r.resources.memory_mib,
            running_s=st["running_s"],
            cpu_s=counters.get("cpu_ns", 0) / 1e9,
            memory_bytes=stats.memory_bytes if stats else 0,
            memory_limit_bytes=st["limit"],
            disks={
                name: Disk(**{f: counters.get(f"disk:{name}:{f}", 0) for f in Disk.model_fields})
                for name in sorted({k.split(":")[1] for k in counters if k.startswith("disk:")})
            },
            public=Net(**{f: counters.get(f"public:{f}", 0) for f in Net.model_fields}),
            # What the NICs carried that the node did not route out or in: the networks' own.
            private=Net(
                **{
                    f: max(counters.get(f"nic:{f}", 0) - counters.get(f"public:{f}", 0), 0)
                    for f in Net.model_fields
                }
            ),
        )
        return sample

    @staticmethod
    def _counters(st: dict[str, Any], o: Observed) -> dict[str, int]:
        """Each cumulative counter of the generation: its base plus what the sandbox reads now
        (a reading that went back means the counter started again: its last value goes into
        the base). A counter it cannot read now (suspended) stays where it was."""
        raw: dict[str, int] = {}
        if o.reading.stats is not None:
            raw["cpu_ns"] = o.reading.stats.cpu_ns
        for name, io in o.disks.items():
            raw[f"disk:{name}:read_bytes"] = io.read_bytes
            raw[f"disk:{name}:write_bytes"] = io.write_bytes
            raw[f"disk:{name}:read_ops"] = io.read_ops
            raw[f"disk:{name}:write_ops"] = io.write_ops
        if o.nics is not None:
            raw |= {f"nic:{k}": v for k, v in o.nics.total._asdict().items()}
            raw |= {f"public:{k}": v for k, v in o.nics.public._asdict().items()}
        last, base = st["raw"], st["base"]
        for key, value in raw.items():
            if value < last.get(key, 0):
                base[key] = base.get(key, 0) + last[key]
            last[key] = max(value, 0)
        return {key: base.get(key, 0) + last[key] for key in last}

    async def flush(self) -> int:
        """Post the spool, oldest first, until the controller cannot be reached or does not
        know this node (the rest waits for the next turn); a post it refuses as such (a 4xx) is
        dropped, or it would hold back every later one. How many posts it took."""
        sent = 0
        for path in self._spooled():
            try:
                batch = Samples.model_validate_json(path.read_bytes())
            except ValueError:  # torn by a crash mid-write: nothing in it can be trusted
                path.unlink(missing_ok=True)
                continue
            try:
                await self.post(batch)
                sent += 1
            except (Unavailable, Unauthenticated) as e:
                log.warning("samples not taken (kept to send again): %s", e.message)
                break
            except HutchError as e:
                log.warning("samples refused, dropped: %s", e.message)
            path.unlink(missing_ok=True)
        return sent


def node_sample(now: float | None = None) -> NodeSample:
    """The node's own counters, and this process's."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    # user nice system idle iowait irq softirq steal: all but idle and iowait are used
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))
    meminfo = dict(
        (line.split(":")[0], int(line.split()[1]) * 1024)
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.split(":")[0] in ("MemTotal", "MemAvailable")
    )
    me = resource.getrusage(resource.RUSAGE_SELF)
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    return NodeSample(
        time=now if now is not None else time.time(),
        cpu_s=busy / _CLOCK_TICKS,
        memory_bytes=meminfo["MemTotal"] - meminfo["MemAvailable"],
        hutch_cpu_s=me.ru_utime + me.ru_stime,
        hutch_memory_bytes=rss,
    )
