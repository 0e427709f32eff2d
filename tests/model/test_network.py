import dataclasses
from typing import Any

import pytest

from hutch.model.errors import Invalid
from hutch.model.network import Attachment, PortMapping
from hutch.model.sandbox import ProcessSpec, SandboxSpec
from hutch.runtime.state import SandboxRecord

GOOD: dict[str, Any] = {
    "network_id": "net-1",
    "vni": 7,
    "mac": "02:00:00:00:00:05",
    "ip4": "10.96.3.7",
    "prefix4": 24,
    "gateway4": "10.96.3.1",
    "ip6": "fd00:1:2:3::7",
    "prefix6": 64,
    "gateway6": "fd00:1:2:3::1",
    "dns": ("10.96.3.1",),
    "search": ("proj.internal",),
}


def test_a_good_attachment() -> None:
    a = Attachment(**GOOD)
    assert str(a.interface4.network) == "10.96.3.0/24"
    assert str(a.interface6.network) == "fd00:1:2:3::/64"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"vni": 0}, "VNI 0 is out of range"),
        ({"vni": 1 << 24}, "out of range"),
        ({"mac": "02:00:00:00:00"}, "six lower-case hex pairs"),
        ({"mac": "03:00:00:00:00:01"}, "unicast and locally administered"),
        ({"mac": "00:00:00:00:00:01"}, "unicast and locally administered"),
        ({"ip4": "10.96.3"}, "not an IPv4 address"),
        ({"ip4": "fd00::1"}, "not an IPv4 address"),
        ({"ip6": "10.0.0.1"}, "not an IPv6 address"),
        ({"gateway4": "10.96.4.1"}, "not in 10.96.3.0/24"),
        ({"ip4": "10.96.3.1"}, "is the gateway's"),
        ({"ip4": "10.96.3.255"}, "broadcast"),
        ({"prefix4": 31}, "prefix /31 is out of range"),
        ({"prefix6": 128}, "prefix /128 is out of range"),
        ({"egress": "open"}, "egress 'open' is not one of"),
        ({"egress_allow": ("10.0.0.0/8",)}, "needs egress 'allow-list'"),
        ({"egress": "allow-list", "egress_allow": ("nope",)}, "not a CIDR"),
        ({"dns": ("resolver",)}, "DNS server 'resolver'"),
        ({"search": ("a b",)}, "search domain"),
    ],
)
def test_bad_attachments_say_why(change: dict[str, Any], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        Attachment(**{**GOOD, **change})


def test_port_mapping_parse() -> None:
    assert PortMapping.parse("8080:80") == PortMapping(8080, 80)
    assert PortMapping.parse("127.0.0.1:53:5353/udp") == PortMapping(53, 5353, "udp", "127.0.0.1")
    for bad, message in [
        ("80", "is not"),
        ("5\u00b2:80", "is not"),
        ("0:80", "host port 0 is out of range"),
        ("70000:80", "host port 70000 is out of range"),
        ("8080:80/sctp", "protocol 'sctp'"),
        ("nohost:1:2", "not an IP address"),
    ]:
        with pytest.raises(Invalid, match=message):
            PortMapping.parse(bad)


def test_sandbox_spec_checks_networks_and_ports() -> None:
    proc = ProcessSpec(args=("true",))
    a = Attachment(**GOOD)
    with pytest.raises(Invalid, match="need a network"):
        SandboxSpec(id="s", process=proc, ports=(PortMapping(80, 80),))
    with pytest.raises(Invalid, match="at most once"):
        SandboxSpec(id="s", process=proc, networks=(a, a))
    with pytest.raises(Invalid, match="published twice"):
        SandboxSpec(id="s", process=proc, networks=(a,), ports=(PortMapping(80, 80),) * 2)


def test_records_keep_networks_and_ports() -> None:
    a = Attachment(**GOOD)
    spec = SandboxSpec(
        id="s", process=ProcessSpec(args=("true",)), networks=(a,), ports=(PortMapping(80, 8),)
    )
    record = SandboxRecord(spec=spec, runtime="container")
    again = SandboxRecord.from_json(record.to_json())
    assert again.spec == spec
    assert dataclasses.replace(again.spec) == spec
