"""Networks as the controller keeps them: a project's networks, addresses, security groups and
their rules, and the pure arithmetic of address management (no I/O: the store picks among what
these functions offer, under its unique constraints).

Every network has a `slot` (1..65535, unique controller-wide): its VNI, and the number of its
IPv6 /64 inside the controller's ULA /48 unless the project chose a /64 of its own (outside
that /48). A default network also takes a /24 of the IPv4 pool (`pool4`, its index there).
Inside a network, host number `h` is `subnet4[h]` and `subnet6[h]`, and its MAC is
`02:SS:SS:HH:HH:HH` (slot, host): unique controller-wide by construction, stable while the
address is held. Host 1 is the gateway (the node's bridge).
"""

import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from hutch.model.errors import Conflict, Invalid
from hutch.model.network import EGRESS, Attachment, PortMapping

MAX_SLOT = 0xFFFF  # networks per controller: the /64s of a /48
MIN_PREFIX4 = 8  # a network is at most a /8 ...
MAX_PREFIX4 = 29  # ... and at least a /29: gateway and 5 machines
GATEWAY_HOST = 1
NONE = "none"  # `--network none`
DEFAULT = "default"  # the project's network made on first use
DIRECTIONS = ("ingress", "egress")
PROTOCOLS = ("tcp", "udp", "icmp", "any")
MAX_RULES = 100  # rules per security group
# A project's own IPv4 subnet lies in one of these (RFC 1918 and RFC 6598's shared space); not
# `is_private`, which also takes 0/8, 240/4, the documentation nets and the broadcast address.
PRIVATE4 = tuple(
    ipaddress.IPv4Network(r)
    for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
# A chosen subnet overlapping another project's network. Refused controller-wide: two networks
# with one subnet on one node would have the same gateway address and connected route on two
# bridges, and the node's one routing table would send one's replies (DNS, NAT, published
# ports) to the other's bridge. The other project is not named: that it exists is its own.
IN_USE = "overlaps a network in use on this controller: choose another"


@dataclass(frozen=True, slots=True)
class Network:
    id: str
    project_id: str
    name: str
    subnet4: str  # "10.96.3.0/24"
    subnet6: str  # "fdxx:xxxx:xxxx:3::/64"
    slot: int  # VNI, and the /64's number in the ULA /48
    created_at: float
    pool4: int | None = None  # its /24's index in the controller's pool (default networks)
    egress: str = "nat"  # "nat" | "deny" | "allow-list"
    egress_allow: tuple[str, ...] = ()

    @property
    def vni(self) -> int:
        return self.slot

    @property
    def gateway4(self) -> str:
        return str(ipaddress.ip_network(self.subnet4)[GATEWAY_HOST])

    @property
    def gateway6(self) -> str:
        return str(ipaddress.ip_network(self.subnet6)[GATEWAY_HOST])


@dataclass(frozen=True, slots=True)
class Address:
    """A machine's place on one network: held from its creation to its destruction (and, for a
    machine lost with its node, until that node is fenced)."""

    network_id: str
    machine_id: str
    position: int  # the machine's NIC index: 0 is eth0
    host: int
    mac: str
    ip4: str
    ip6: str


# An address as a machine's views show it: (network name, network id, mac, ip4, ip6). A tuple: a
# listing reads one per machine, and an Address object with its network's name cost more.
ShownAddress = tuple[str, str, str, str, str]


def shown_address(address: Address, network: str) -> ShownAddress:
    """`address` on the network named `network`, as views show it."""
    return (network, address.network_id, address.mac, address.ip4, address.ip6)


class ShownWiring(NamedTuple):
    """A machine's networks as its views show them, as the store reads them."""

    addresses: list[ShownAddress]  # eth0 first
    ports: list[PortMapping]  # by host port and protocol
    security_groups: list[str]  # names, in the machine's order


@dataclass(frozen=True, slots=True)
class Rule:
    """A security group rule: traffic allowed in (ingress) or out (egress)."""

    direction: Literal["ingress", "egress"]
    protocol: Literal["tcp", "udp", "icmp", "any"]
    port_min: int = 0  # 0/0: all ports
    port_max: int = 0
    remote_cidr: str = ""  # exactly one of these two
    remote_group: str = ""  # a security group's id (the same project's)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise Invalid(f"direction {self.direction!r} is not ingress or egress")
        if self.protocol not in PROTOCOLS:
            raise Invalid(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if (self.port_min, self.port_max) != (0, 0):
            if self.protocol not in ("tcp", "udp"):
                raise Invalid(f"ports need protocol tcp or udp, not {self.protocol}")
            if not 1 <= self.port_min <= self.port_max <= 65535:
                raise Invalid(
                    f"port range {self.port_min}-{self.port_max} is not within 1-65535, low first"
                )
        if bool(self.remote_cidr) == bool(self.remote_group):
            raise Invalid("a rule names exactly one of a remote CIDR and a remote group")
        if self.remote_cidr:
            parse_cidr(self.remote_cidr, "remote")

    @classmethod
    def parse_ports(cls, text: str) -> tuple[int, int]:
        """`80`, `8000-8080`, or `` (all) as (port_min, port_max)."""
        if not text:
            return 0, 0
        low, _, high = text.partition("-")
        high = high or low
        if not (low.isascii() and low.isdigit() and high.isascii() and high.isdigit()):
            raise Invalid(f"ports {text!r} are not PORT or LOW-HIGH")
        if len(low) > 5 or len(high) > 5 or int(high) > 65535 or int(low) == 0:
            raise Invalid(f"ports {text!r} are not within 1-65535")
        return int(low), int(high)


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    id: str
    project_id: str
    name: str
    created_at: float
    rules: tuple[tuple[str, Rule], ...] = ()  # (rule id, rule), oldest first


def parse_cidr(text: str, what: str = "subnet") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """`text` as a network; Invalid, saying which, for what is not a CIDR and for an address
    with host bits under its prefix (10.0.0.1/24: the network meant is named)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        meant = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(
            f"{what} {text!r} is not a CIDR (ADDRESS/PREFIX: 192.168.10.0/24, "
            "fd12:3456:789a:1::/64)"
        ) from None
    raise Invalid(f"{what} {text!r} has host bits set: the network is {meant}")


def check_egress(egress: str, allow: Sequence[str]) -> None:
    if egress not in EGRESS:
        raise Invalid(f"egress {egress!r} is not one of {', '.join(EGRESS)}")
    if allow and egress != "allow-list":
        raise Invalid("an egress allow-list needs egress 'allow-list'")
    for cidr in allow:
        parse_cidr(cidr, "egress allow-list entry")


def check_subnet4(
    text: str, pool: str, others: Iterable[tuple[str, str]], elsewhere: Iterable[str] = ()
) -> ipaddress.IPv4Network:
    """A subnet a project asks for: IPv4, /8 to /29, private (RFC 1918 or 100.64/10), outside
    the controller's pool (where default networks come from), overlapping none of the
    project's other networks (`others`: (name, subnet4)) nor any other project's (`elsewhere`:
    their subnet4s, not named to this project: see `IN_USE`)."""
    net = parse_cidr(text)
    if not isinstance(net, ipaddress.IPv4Network):
        raise Invalid(f"subnet {text} is not IPv4 (an IPv6 /64 goes in subnet6)")
    if net.prefixlen > MAX_PREFIX4:
        raise Invalid(f"subnet {text} is too small: /{MAX_PREFIX4} at least (gateway + 5 hosts)")
    if net.prefixlen < MIN_PREFIX4:
        raise Invalid(f"subnet {text} is too large: /{MIN_PREFIX4} at most")
    if not any(net.subnet_of(r) for r in PRIVATE4):
        raise Invalid(
            f"subnet {text} is not a private range (10/8, 172.16/12, 192.168/16, 100.64/10)"
        )
    if net.overlaps(ipaddress.IPv4Network(pool)):
        raise Invalid(f"subnet {text} overlaps the controller's pool {pool} (default networks)")
    _check_apart(net, "subnet", text, others, elsewhere)
    return net


ULA = ipaddress.IPv6Network("fd00::/8")  # RFC 4193's locally assigned unique-local addresses
PREFIX6 = 64


def check_subnet6(
    text: str,
    ula48: str = "",
    others: Iterable[tuple[str, str]] = (),
    elsewhere: Iterable[str] = (),
) -> ipaddress.IPv6Network:
    """An IPv6 subnet a project asks for: a /64 (host numbers are IPv4's, carried over; SLAAC
    and most IPv6 tooling assume /64), unique-local (fd00::/8: hutch routes no global prefix
    to its networks, and a guest must not take someone else's), outside the controller's own
    ULA /48 (where default /64s come from) and overlapping none of the project's other
    networks (`others`: (name, subnet6)) nor any other project's (`elsewhere`: subnet6s)."""
    net = parse_cidr(text, "subnet6")
    if not isinstance(net, ipaddress.IPv6Network):
        raise Invalid(f"subnet6 {text} is not IPv6 (give the IPv4 subnet as subnet)")
    if net.prefixlen != PREFIX6:
        raise Invalid(
            f"subnet6 {text} is a /{net.prefixlen}: a network's IPv6 subnet is one /{PREFIX6} "
            "(fdXX:XXXX:XXXX:XXXX::/64)"
        )
    if not net.subnet_of(ULA):
        raise Invalid(f"subnet6 {text} is not unique-local (fd00::/8)")
    if ula48 and net.overlaps(ipaddress.IPv6Network(ula48)):
        raise Invalid(f"subnet6 {text} is in the controller's {ula48} (default networks)")
    _check_apart(net, "subnet6", text, others, elsewhere)
    return net


def _check_apart(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    label: str,
    text: str,
    others: Iterable[tuple[str, str]],
    elsewhere: Iterable[str],
) -> None:
    """Invalid if `net` overlaps one of the project's other networks (`others`: (name, subnet)
    of `net`'s version), Conflict if another project's (`elsewhere`: their subnets, unnamed)."""
    kind = type(net)
    for name, other in others:
        if net.overlaps(kind(other)):
            raise Invalid(f"{label} {text} overlaps network {name}'s {other}")
    if any(net.overlaps(kind(other)) for other in elsewhere):
        raise Conflict(f"{label} {text} {IN_USE}")


def pool_subnet(pool: str, prefix: int, index: int) -> str:
    """The `index`th /prefix of the pool; Invalid when the pool has no such subnet."""
    net = ipaddress.IPv4Network(pool)
    shift = prefix - net.prefixlen
    if shift < 0 or not 0 <= index < (1 << shift):
        raise Invalid(f"the pool {pool} has no {index}th /{prefix}")
    size = 1 << (32 - prefix)
    return str(ipaddress.IPv4Network((int(net.network_address) + index * size, prefix)))


def pool_size(pool: str, prefix: int) -> int:
    return 1 << max(prefix - ipaddress.IPv4Network(pool).prefixlen, 0)


def new_ula48() -> str:
    """A random ULA /48 (RFC 4193: fd00::/8 and 40 random bits), chosen once per controller."""
    return str(ipaddress.IPv6Network((0xFD << 120 | secrets.randbits(40) << 80, 48)))


def subnet6_of(ula48: str, slot: int) -> str:
    net = ipaddress.IPv6Network(ula48)
    if net.prefixlen != 48 or not 1 <= slot <= MAX_SLOT:
        raise Invalid(f"no /64 number {slot} in {ula48}")
    return str(ipaddress.IPv6Network((int(net.network_address) | slot << 64, 64)))


def lowest_free(used: Iterable[int], low: int, high: int) -> int | None:
    """The lowest number in low..high that is not in `used`; None when all are."""
    taken = set(used)
    return next((n for n in range(low, high + 1) if n not in taken), None)


def host_range(subnet4: str) -> tuple[int, int]:
    """The host numbers machines may get: after the gateway, before the broadcast address."""
    net = ipaddress.IPv4Network(subnet4)
    return GATEWAY_HOST + 1, net.num_addresses - 2


def mac_of(slot: int, host: int) -> str:
    if not 1 <= slot <= MAX_SLOT or not 0 <= host < 1 << 24:
        raise Invalid(f"no MAC for host {host} of slot {slot}")
    octets = [0x02, slot >> 8, slot & 0xFF, host >> 16, (host >> 8) & 0xFF, host & 0xFF]
    return ":".join(f"{o:02x}" for o in octets)


def address_of(network: Network, machine_id: str, position: int, host: int) -> Address:
    first, last = host_range(network.subnet4)
    if not first <= host <= last:
        raise Invalid(f"host {host} is outside {network.subnet4}'s machines ({first}-{last})")
    return Address(
        network_id=network.id,
        machine_id=machine_id,
        position=position,
        host=host,
        mac=mac_of(network.slot, host),
        ip4=str(ipaddress.IPv4Network(network.subnet4)[host]),
        ip6=str(ipaddress.IPv6Network(network.subnet6)[host]),
    )


_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def dns_name(machine: str, project: str) -> str:
    """`NAME.PROJECT.internal`, the name other machines on its networks resolve."""
    return f"{machine}.{project}.internal"


def attachment(network: Network, address: Address, project: str) -> Attachment:
    """What the node is told about one NIC."""
    search = (f"{project}.internal",) if _LABEL.match(project) else ()
    return Attachment(
        network_id=network.id,
        vni=network.vni,
        mac=address.mac,
        ip4=address.ip4,
        prefix4=ipaddress.IPv4Network(network.subnet4).prefixlen,
        gateway4=network.gateway4,
        ip6=address.ip6,
        prefix6=ipaddress.IPv6Network(network.subnet6).prefixlen,
        gateway6=network.gateway6,
        egress=network.egress,
        egress_allow=network.egress_allow,
        dns=(network.gateway4,),
        search=search,
    )


def ip_literals(hosts: Iterable[str]) -> tuple[str, ...]:
    """The IP addresses among `hosts`, sorted and once each: names are left out (nftables
    blocks addresses), and so are loopback (every node blocks it anyway) and the unspecified
    address (a controller listening on every address)."""
    out: set[str] = set()
    for host in hosts:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not (addr.is_loopback or addr.is_unspecified):
            out.add(str(addr))
    return tuple(sorted(out))
