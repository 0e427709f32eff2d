"""Which published ports have connections: read from the kernel's connection tracking table
(`/proc/.../net/nf_conntrack`, one line per tracked flow), so that a machine that idles
(`MachineSpec.idle_s`) is one no connection reached for that long.

A connection counts while it is tracked and, for TCP, not closing: a finished one lingers in
TIME_WAIT for minutes and would keep a machine awake that nobody uses. A long-lived idle
connection counts: someone is connected. Each flow is matched by its reply tuple's source, the
guest's address and port, so a connection DNATed from a published port and one the node's
waker makes to the guest both count."""

from collections.abc import Iterable
from pathlib import Path

Target = tuple[str, str, int]  # (protocol, the guest's IPv4 address, the guest's port)
# TCP states of a connection that is not over (conntrack's names).
_OPEN = frozenset({"SYN_SENT", "SYN_RECV", "ESTABLISHED", "SYN_SENT2"})
# The table of the calling thread's network namespace (/proc/self/net is the process's).
TABLE = Path("/proc/thread-self/net/nf_conntrack")


def active(lines: Iterable[str], targets: Iterable[Target]) -> set[Target]:
    """The `targets` that a flow in `lines` (nf_conntrack's format) is connected to."""
    wanted = set(targets)
    found: set[Target] = set()
    if not wanted:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[0] != "ipv4":
            continue
        proto = fields[2]
        if proto == "tcp" and fields[5] not in _OPEN:
            continue
        pairs = [f.partition("=") for f in fields if "=" in f]
        srcs = [v for k, _, v in pairs if k == "src"]
        sports = [v for k, _, v in pairs if k == "sport"]
        if len(srcs) < 2 or len(sports) < 2 or not sports[1].isdigit():
            continue
        target = (proto, srcs[1], int(sports[1]))  # the reply's source: the guest's end
        if target in wanted:
            found.add(target)
    return found


def read_active(targets: Iterable[Target], table: Path = TABLE) -> set[Target]:
    """`active` over this thread's network namespace's table (none without conntrack)."""
    try:
        with table.open() as f:
            return active(f, targets)
    except FileNotFoundError:
        return set()
