"""The DNS wire format, strictly: what a zone answers, and what it does with malformed, oversized
and looping queries (no sockets here; tests/network/test_node.py resolves through them)."""

import ipaddress
import random
import struct

import pytest

from hutch.model.errors import Invalid
from hutch.network.dns import (
    FORMERR,
    MAX_MESSAGE,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    Malformed,
    Record,
    Zone,
    machine_records,
    parse_query,
    zones,
)

A, AAAA, MX, ANY = 1, 28, 15, 255
ZONE = Zone(
    [
        *machine_records("web", "m-1a2b", "demo", "10.96.3.7", "fd00:0:0:3::7"),
        Record("v4only.demo.internal", ip4="10.96.3.8"),
    ]
)


def name(text: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in text.split(".") if x) + b"\0"


def query(qname: str, qtype: int = A, *, ident: int = 0x1234, flags: int = 0x0100,
          counts: tuple[int, int, int, int] = (1, 0, 0, 0), qclass: int = 1) -> bytes:  # fmt: skip
    return (
        struct.pack("!6H", ident, flags, *counts) + name(qname) + struct.pack("!HH", qtype, qclass)
    )


def decode(reply: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, answers as addresses) of a response, checking what every response must be."""
    ident, flags, qd, an, ns, ar = struct.unpack_from("!6H", reply)
    assert flags & 0x8000  # a response
    assert not flags & 0x0080  # no recursion available, ever
    assert (ns, ar) == (0, 0)
    pos = 12
    for _ in range(qd):
        while reply[pos]:
            pos += reply[pos] + 1
        pos += 5
    out = []
    for _ in range(an):
        ptr, _rtype, rclass, ttl, size = struct.unpack_from("!HHHIH", reply, pos)
        assert ptr == 0xC00C and rclass == 1 and ttl > 0
        pos += 12
        out.append(str(ipaddress.ip_address(reply[pos : pos + size])))
        pos += size
    assert pos == len(reply)
    return ident, flags & 0xF, out


def test_a_and_aaaa_of_a_name_and_of_an_id() -> None:
    for qname in ("web.demo.internal", "m-1a2b.demo.internal", "WeB.DEMO.Internal."):
        assert decode(ZONE.answer(query(qname)) or b"") == (0x1234, NOERROR, ["10.96.3.7"])
        assert decode(ZONE.answer(query(qname, AAAA)) or b"") == (
            0x1234, NOERROR, ["fd00:0:0:3::7"]
        )  # fmt: skip
    assert decode(ZONE.answer(query("web.demo.internal", ANY)) or b"")[2] == [
        "10.96.3.7", "fd00:0:0:3::7"
    ]  # fmt: skip
    # the question comes back as asked (its case too: resolvers may check it, 0x20 encoding)
    reply = ZONE.answer(query("WeB.DEMO.internal")) or b""
    assert name("WeB.DEMO.internal") in reply
    assert ZONE.answer(query("web.demo.internal"))[2:4] == b"\x85\x00"  # type: ignore[index]


def test_a_name_without_the_type_asked_is_nodata_and_unknown_names_nxdomain() -> None:
    assert decode(ZONE.answer(query("v4only.demo.internal", AAAA)) or b"") == (0x1234, NOERROR, [])
    assert decode(ZONE.answer(query("web.demo.internal", MX)) or b"") == (0x1234, NOERROR, [])
    for qname in ("db.demo.internal", "web.other.internal", "demo.internal", "internal",
                  "x.web.demo.internal"):  # fmt: skip
        assert decode(ZONE.answer(query(qname)) or b"") == (0x1234, NXDOMAIN, [])


def test_anything_outside_internal_is_refused() -> None:
    for qname in ("example.com", "web.demo.internal.com", ".", "internal.example", "localhost"):
        assert decode(ZONE.answer(query(qname)) or b"") == (0x1234, REFUSED, [])
    assert decode(ZONE.answer(query("web.demo.internal", qclass=3)) or b"")[1] == REFUSED  # CH
    assert decode(ZONE.answer(query("1.3.96.10.in-addr.arpa", 12)) or b"")[1] == REFUSED


def test_not_a_query_gets_no_answer() -> None:
    good = query("web.demo.internal")
    assert ZONE.answer(good[:11]) is None  # shorter than a header
    assert ZONE.answer(b"") is None
    assert ZONE.answer(query("web.demo.internal", flags=0x8000)) is None  # a response
    oversize = good[:2] + struct.pack("!5H", 0, 1, 0, 0, 1) + good[12:] + b"\0" * MAX_MESSAGE
    assert ZONE.answer(oversize) is None


def formerr(data: bytes) -> None:
    with pytest.raises(Malformed):
        parse_query(data)
    reply = ZONE.answer(data)
    assert reply is not None and decode(reply) == (struct.unpack_from("!H", data)[0], FORMERR, [])
    assert len(reply) == 12  # the header alone: nothing of the malformed question echoed


def test_malformed_queries_get_formerr() -> None:
    header = struct.pack("!6H", 7, 0, 1, 0, 0, 0)
    for counts in ((0, 0, 0, 0), (2, 0, 0, 0), (1, 1, 0, 0), (1, 0, 1, 0)):
        formerr(query("web.demo.internal", counts=counts))
    formerr(header)  # no question at all
    formerr(header + b"\x03web")  # the name runs past the end
    formerr(header + b"\x09web")  # a label runs past the end
    formerr(header + name("web.demo.internal"))  # no type and class
    formerr(header + name("web.demo.internal") + b"\0\1")  # half of them
    formerr(header + b"\x40" + b"a" * 64 + b"\0" + b"\0\1\0\1")  # a label of 64 (type 0b01)
    formerr(header + b"\x80abc\0\0\1\0\1")  # label type 0b10


def test_compression_in_a_question_and_loops() -> None:
    header = struct.pack("!6H", 7, 0, 1, 0, 0, 0)
    formerr(header + b"\xc0\x0c\0\1\0\1")  # points at itself
    formerr(header + b"\x03web\xc0\x0c\0\1\0\1")  # points back at its own start: a loop
    formerr(header + b"\x03web\xc0\x12\xc0\x10\0\1\0\1")  # two pointers pointing at each other
    formerr(header + b"\xc0\x00\0\1\0\1")  # into the header
    formerr(header + b"\xc0")  # half a pointer


def test_overlong_names_are_malformed_and_the_longest_valid_one_is_not() -> None:
    header = struct.pack("!6H", 7, 0, 1, 0, 0, 0)
    longest = b"".join([b"\x3f" + b"a" * 63] * 3 + [b"\x3d" + b"a" * 61]) + b"\0"  # 255 bytes
    assert len(longest) == 255
    assert parse_query(header + longest + b"\0\1\0\1").labels[-1] == b"a" * 61
    assert decode(ZONE.answer(header + longest + b"\0\1\0\1") or b"")[1] == REFUSED
    formerr(header + b"\x01a" + longest + b"\0\1\0\1")  # 257 bytes
    formerr(header + b"\x01a" * 200 + b"\0\0\1\0\1")  # many short labels: 401 bytes


def test_other_opcodes_are_not_implemented() -> None:
    for opcode in (1, 2, 4, 5, 15):  # IQUERY, STATUS, NOTIFY, UPDATE, ...
        reply = ZONE.answer(query("web.demo.internal", flags=opcode << 11)) or b""
        assert decode(reply)[1] == NOTIMP and len(reply) == 12


def test_edns_is_ignored_not_refused() -> None:
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)  # an OPT record, as dig and musl send
    q = query("web.demo.internal", counts=(1, 0, 0, 1)) + opt
    assert decode(ZONE.answer(q) or b"") == (0x1234, NOERROR, ["10.96.3.7"])


def test_random_bytes_never_break_the_parser() -> None:
    rng = random.Random(12)
    seeds = [query("web.demo.internal"), query("example.com", AAAA)]
    for i in range(20000):
        if i % 2:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = data[: rng.randrange(len(data) + 1)]
        else:
            data = bytearray(rng.randbytes(rng.randrange(0, 600)))
        reply = ZONE.answer(bytes(data))
        if reply is not None:
            assert reply[:2] == data[:2] and reply[2] & 0x80
            assert len(reply) <= MAX_MESSAGE


def test_records_hold_only_internal_dns_names() -> None:
    for bad in ("web.demo.example", "internal", "we_b.demo.internal", "-web.demo.internal",
                "web..demo.internal", "a" * 64 + ".demo.internal"):  # fmt: skip
        with pytest.raises(Invalid):
            Record(bad, "10.0.0.1")
    with pytest.raises(Invalid):
        Record("web.demo.internal", "fd00::1")
    with pytest.raises(Invalid):
        Record("web.demo.internal", "10.0.0.1", "10.0.0.2")
    # a machine whose name is no DNS label still has its id's name
    assert [r.name for r in machine_records("my_web", "m-1", "demo", "10.0.0.1", "")] == [
        "m-1.demo.internal"
    ]


def test_zones_from_peers_keep_each_network_to_itself() -> None:
    class Peer:
        def __init__(self, network_id: str, machine: str, name: str, project: str) -> None:
            self.network_id, self.machine, self.name, self.project = (
                network_id, machine, name, project
            )  # fmt: skip
            self.ip4, self.ip6 = "10.0.0.2", "fd00::2"

    got = zones([Peer("net-a", "m-1", "web", "demo"), Peer("net-b", "m-2", "db", "other")])
    assert {n: sorted(r.name for r in rs) for n, rs in got.items()} == {
        "net-a": ["m-1.demo.internal", "web.demo.internal"],
        "net-b": ["db.other.internal", "m-2.other.internal"],
    }
