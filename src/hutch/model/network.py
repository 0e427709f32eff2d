"""Networks as the node sees them: what one NIC of a sandbox is wired to, and published ports.

The controller side (networks, security groups, address management) extends this module; the
node side (`hutch.network`) codes against `Attachment` and `PortMapping` only.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from hutch.model.errors import Invalid

MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
MAX_VNI = (1 << 24) - 1
EGRESS = ("nat", "deny", "allow-list")
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def _address(what: str, value: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(f"{what} {value!r} is not an IPv{version} address") from None
    if addr.version != version:
        raise Invalid(f"{what} {value!r} is not an IPv{version} address")
    return addr


@dataclass(frozen=True, slots=True)
class Attachment:
    """One NIC of one sandbox: everything the node needs to wire it."""

    network_id: str  # "net-..." (store id)
    vni: int  # 1..16777215, unique per network controller-wide
    mac: str  # "02:xx:xx:xx:xx:xx", stable per (machine, network)
    ip4: str  # "10.96.3.7"
    prefix4: int  # 24
    gateway4: str  # "10.96.3.1" (the node's bridge holds it, the same on every node)
    ip6: str  # "fd..::7"
    prefix6: int  # 64
    gateway6: str  # "fd..::1"
    egress: str = "nat"  # "nat" | "deny" | "allow-list"
    egress_allow: tuple[str, ...] = ()  # CIDRs when egress == "allow-list"
    dns: tuple[str, ...] = ()  # resolver addresses given to the guest (the gateway)
    search: tuple[str, ...] = ()  # "PROJECT.internal"

    def __post_init__(self) -> None:
        if not self.network_id:
            raise Invalid("an attachment needs its network's id")
        if not 1 <= self.vni <= MAX_VNI:
            raise Invalid(f"VNI {self.vni} is out of range (1-{MAX_VNI})")
        if not MAC.match(self.mac):
            raise Invalid(f"MAC {self.mac!r} is not six lower-case hex pairs (02:00:00:00:00:01)")
        first = int(self.mac[:2], 16)
        if first & 1 or not first & 2:
            raise Invalid(f"MAC {self.mac!r} must be unicast and locally administered (02:...)")
        for version, ip, prefix, gateway in (
            (4, self.ip4, self.prefix4, self.gateway4),
            (6, self.ip6, self.prefix6, self.gateway6),
        ):
            bits = 32 if version == 4 else 128
            if not 8 <= prefix <= bits - 2:
                raise Invalid(f"IPv{version} prefix /{prefix} is out of range (8-{bits - 2})")
            addr = _address(f"IPv{version} address", ip, version)
            gw = _address(f"IPv{version} gateway", gateway, version)
            net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
            if gw not in net:
                raise Invalid(f"gateway {gateway} is not in {net}, the network of {ip}")
            if addr == gw:
                raise Invalid(f"address {ip} is the gateway's")
            if version == 4 and addr in (net.network_address, net.broadcast_address):
                raise Invalid(f"address {ip} is the network or broadcast address of {net}")
        if self.egress not in EGRESS:
            raise Invalid(f"egress {self.egress!r} is not one of {', '.join(EGRESS)}")
        for cidr in self.egress_allow:
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise Invalid(f"egress allow-list entry {cidr!r} is not a CIDR") from None
        if self.egress_allow and self.egress != "allow-list":
            raise Invalid("an egress allow-list needs egress 'allow-list'")
        for server in self.dns:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise Invalid(f"DNS server {server!r} is not an IP address") from None
        for domain in self.search:
            if not _DNS_NAME.match(domain):
                raise Invalid(f"search domain {domain!r} is not a DNS name")

    def resolv_conf(self) -> str:
        """/etc/resolv.conf for a sandbox whose first NIC this is."""
        lines = [f"nameserver {s}" for s in self.dns]
        if self.search:
            lines.append("search " + " ".join(self.search))
        return "".join(f"{line}\n" for line in lines)

    def hosts(self, hostname: str) -> str:
        """/etc/hosts: localhost, and `hostname` at this NIC's addresses."""
        text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        if hostname:
            text += f"{self.ip4}\t{hostname}\n{self.ip6}\t{hostname}\n"
        return text

    @property
    def interface4(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.ip4}/{self.prefix4}")

    @property
    def interface6(self) -> ipaddress.IPv6Interface:
        return ipaddress.IPv6Interface(f"{self.ip6}/{self.prefix6}")


@dataclass(frozen=True, slots=True)
class PortMapping:
    """A published port: `-p [HOST_IP:]HOST_PORT:PORT[/tcp|/udp]`."""

    host_port: int
    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = ""  # "": every address of the node, 127.0.0.1 included

    def __post_init__(self) -> None:
        for what, value in (("host port", self.host_port), ("port", self.port)):
            if not 1 <= value <= 65535:
                raise Invalid(f"{what} {value} is out of range (1-65535)")
        if self.protocol not in ("tcp", "udp"):
            raise Invalid(f"protocol {self.protocol!r} is not tcp or udp")
        if self.host_ip:
            try:
                addr = ipaddress.ip_address(self.host_ip)
            except ValueError:
                raise Invalid(f"host address {self.host_ip!r} is not an IP address") from None
            if addr.version != 4:
                raise Invalid(f"host address {self.host_ip}: only IPv4 host addresses publish")

    @classmethod
    def parse(cls, text: str) -> "PortMapping":
        """`[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]`, as `hutch run -p` takes it."""
        rest, _, proto = text.partition("/")
        parts = rest.rsplit(":", 2)
        if len(parts) == 2:
            parts.insert(0, "")
        if len(parts) != 3 or not all(x.isascii() and x.isdigit() for x in parts[1:]):
            raise Invalid(f"port {text!r} is not [HOST_IP:]HOST_PORT:PORT[/tcp|/udp]")
        protocol = proto or "tcp"
        if protocol not in ("tcp", "udp"):
            raise Invalid(f"port {text!r}: protocol {protocol!r} is not tcp or udp")
        return cls(int(parts[1]), int(parts[2]), protocol, parts[0])  # type: ignore[arg-type]
