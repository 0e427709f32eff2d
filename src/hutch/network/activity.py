"""Which published ports have connections: read from the kernel's connection tracking table
(`/proc/.../net/nf_conntrack`, one line per tracked flow), so that a machine that idles
(`MachineSpec.idle_s`) is one no connection reached for that long.

Each flow is matched by its reply tuple's source, the guest's address and port: a connection
DNATed from a published port and one the node's waker makes to the guest both count. A flow
counts while it is open (for TCP, answered and not closing; UDP while tracked) and, closed, on
the first look that sees it (a short request begins and ends between two looks); a closed TCP
flow lingers in TIME_WAIT for minutes and must not keep a machine awake that nobody uses."""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

Target = tuple[str, str, int]  # (protocol, the guest's IPv4 address, the guest's port)
# TCP states of a connection the guest answered and that is not over (conntrack's names). Not
# SYN_SENT: an attempt nobody answered (the waker's while the guest resumes, one to a guest
# still booting) stays tracked for two minutes.
_OPEN = frozenset({"SYN_RECV", "ESTABLISHED"})
# The table of the calling thread's network namespace (/proc/self/net is the process's).
TABLE = Path("/proc/thread-self/net/nf_conntrack")


@dataclass(frozen=True, slots=True)
class Flow:
    target: Target
    key: str  # the flow's original tuple: the same flow has it on every look
    open: bool


def flows(lines: Iterable[str], targets: Iterable[Target]) -> list[Flow]:
    """The flows in `lines` (nf_conntrack's format) to one of `targets`."""
    wanted = set(targets)
    found: list[Flow] = []
    if not wanted:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[0] != "ipv4":
            continue
        proto = fields[2]
        pairs = [f.partition("=") for f in fields if "=" in f]
        srcs = [v for k, _, v in pairs if k == "src"]
        sports = [v for k, _, v in pairs if k == "sport"]
        if len(srcs) < 2 or len(sports) < 2 or not sports[1].isdigit():
            continue
        target = (proto, srcs[1], int(sports[1]))  # the reply's source: the guest's end
        if target in wanted:
            key = " ".join(f"{k}={v}" for k, _, v in pairs[:4])
            found.append(Flow(target, f"{proto} {key}", proto != "tcp" or fields[5] in _OPEN))
    return found


def read_flows(targets: Iterable[Target], table: Path = TABLE) -> list[Flow]:
    """`flows` of this thread's network namespace's table (none without conntrack)."""
    try:
        with table.open() as f:
            return flows(f, targets)
    except FileNotFoundError:
        return []


def active(now: list[Flow], before: set[str]) -> set[Target]:
    """The targets with an open flow in `now`, or one that `before` (the keys of the previous
    look's flows) did not have."""
    return {f.target for f in now if f.open or f.key not in before}
