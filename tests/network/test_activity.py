"""Which flows of the connection tracking table count as a machine's connections
(`hutch.network.activity`), on lines as the kernel writes them."""

from hutch.network.activity import active, flows

GUEST = ("tcp", "10.96.0.2", 80)
LINES = [
    # a client of the published port, DNATed to the guest, talking now
    "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=198.51.100.1 sport=40000 "
    "dport=8080 src=10.96.0.2 dst=192.0.2.9 sport=80 dport=40000 [ASSURED] mark=0 use=2",
    # one that ended (lingers for two minutes)
    "ipv4     2 tcp      6 117 TIME_WAIT src=127.0.0.1 dst=127.0.0.1 sport=42024 dport=8080 "
    "src=10.96.0.2 dst=10.96.0.1 sport=80 dport=42024 [ASSURED] mark=0 zone=0 use=2",
    # an attempt nobody answered (the waker's, while the guest resumes)
    "ipv4     2 tcp      6 68 SYN_SENT src=10.96.0.1 dst=10.96.0.2 sport=59098 dport=80 "
    "[UNREPLIED] src=10.96.0.2 dst=10.96.0.1 sport=80 dport=59098 mark=0 zone=0 use=2",
    # the same guest's other port, and another guest's port 80: not this target
    "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=10.96.0.2 sport=40001 "
    "dport=22 src=10.96.0.2 dst=192.0.2.9 sport=22 dport=40001 [ASSURED] mark=0 use=2",
    "ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.9 dst=10.96.0.3 sport=40002 "
    "dport=80 src=10.96.0.3 dst=192.0.2.9 sport=80 dport=40002 [ASSURED] mark=0 use=2",
    "ipv4     2 udp      17 29 src=192.0.2.9 dst=198.51.100.1 sport=5000 dport=5353 "
    "src=10.96.0.2 dst=192.0.2.9 sport=53 dport=5000 mark=0 use=2",
    "ipv6     10 tcp      6 431999 ESTABLISHED src=fd00::9 dst=fd00::1 sport=1 dport=2 "
    "src=fd00::1 dst=fd00::9 sport=2 dport=1 [ASSURED] mark=0 use=2",
    "garbage",
]


def test_open_flows_count_closed_ones_once_and_unanswered_ones_never_again() -> None:
    found = flows(LINES, [GUEST, ("udp", "10.96.0.2", 53)])
    assert [(f.target, f.open) for f in found] == [
        (GUEST, True), (GUEST, False), (GUEST, False), (("udp", "10.96.0.2", 53), True)
    ]  # fmt: skip
    assert len({f.key for f in found}) == 4  # each flow keyed by its original tuple
    seen = {f.key for f in found}
    assert active(found, set()) == {GUEST, ("udp", "10.96.0.2", 53)}
    quiet = [f for f in found if not f.open]
    assert active(quiet, set()) == {GUEST}  # new since the last look: a short request
    assert active(quiet, seen) == set()  # seen already: it ended, nobody is connected
    assert flows(LINES, []) == []
