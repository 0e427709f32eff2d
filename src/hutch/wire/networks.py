"""Networks, security groups, and the network parts of machines and of nodes' assignments."""

from typing import Literal

from pydantic import Field

from hutch.model.network import Attachment, PortMapping
from hutch.wire.common import Request, View

Port = Field(ge=1, le=65535)


class NetworkCreate(Request):
    name: str = Field(min_length=1, max_length=63)
    subnet: str = Field(
        "",
        max_length=43,
        description="IPv4 CIDR, /8 to /29, private, outside the controller's pool; "
        "default: a /24 of the pool",
    )
    subnet6: str = Field(
        "",
        max_length=43,
        description="IPv6 CIDR: a /64 of fd00::/8 (unique-local), outside the controller's "
        "ULA /48; default: a /64 of that /48",
    )
    egress: Literal["nat", "deny", "allow-list"] = Field(
        "nat", description="nat: out through the node; deny: nothing out; allow-list: egress_allow"
    )
    egress_allow: list[str] = Field([], max_length=64, description="CIDRs (egress allow-list)")


class NetworkView(View):
    id: str
    name: str
    project: str
    subnet4: str
    subnet6: str
    gateway4: str
    gateway6: str
    vni: int
    egress: str
    egress_allow: list[str] = []
    machines: int = 0  # machines holding an address on it
    created_at: float


class RuleCreate(Request):
    direction: Literal["ingress", "egress"]
    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    port_min: int = Field(0, ge=0, le=65535, description="0 and 0: every port")
    port_max: int = Field(0, ge=0, le=65535)
    remote_cidr: str = Field("", max_length=43, description="exactly one of remote_cidr...")
    remote_group: str = Field("", max_length=63, description="...and remote_group (name or id)")


class RuleView(View):
    id: str
    direction: str
    protocol: str
    port_min: int = 0
    port_max: int = 0
    remote_cidr: str = ""
    remote_group: str = ""  # the group's id


class SecurityGroupCreate(Request):
    name: str = Field(min_length=1, max_length=63)
    rules: list[RuleCreate] = Field([], max_length=100)


class SecurityGroupView(View):
    id: str
    name: str
    project: str
    rules: list[RuleView] = []
    created_at: float


class PortSpec(Request):
    """A published port: the node's `host_port` (on `host_ip`, default every address of the
    node, 127.0.0.1 included) to the machine's `port`."""

    host_port: int = Port
    port: int = Port
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = Field("", max_length=15)


class PortView(View):
    host_port: int
    port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def model(self) -> PortMapping:
        return PortMapping(self.host_port, self.port, self.protocol, self.host_ip)  # type: ignore[arg-type]


class AddressView(View):
    network: str  # its name
    network_id: str
    mac: str
    ip4: str
    ip6: str


# -- what a node is told --------------------------------------------------------------------------


class NicView(View):
    """One NIC of a sandbox (`hutch.model.network.Attachment`)."""

    network_id: str
    vni: int
    mac: str
    ip4: str
    prefix4: int
    gateway4: str
    ip6: str
    prefix6: int
    gateway6: str
    egress: str = "nat"
    egress_allow: list[str] = []
    dns: list[str] = []
    search: list[str] = []

    def model(self) -> Attachment:
        return Attachment(
            network_id=self.network_id, vni=self.vni, mac=self.mac, ip4=self.ip4,
            prefix4=self.prefix4, gateway4=self.gateway4, ip6=self.ip6, prefix6=self.prefix6,
            gateway6=self.gateway6, egress=self.egress, egress_allow=tuple(self.egress_allow),
            dns=tuple(self.dns), search=tuple(self.search),
        )  # fmt: skip


class GroupRules(View):
    """A security group as nodes enforce it: its rules, and for groups that rules name as
    remote, the addresses of their machines."""

    id: str
    name: str
    rules: list[RuleView] = []
    members: list[str] = []  # ip4 and ip6 of its machines (when a rule names it as remote)


class PeerView(View):
    """A machine on a network the node hosts: a VXLAN FDB entry (mac -> underlay), neighbour
    entries (ip -> mac) and DNS records (NAME.PROJECT.internal, ID.PROJECT.internal)."""

    network_id: str
    machine: str  # id
    name: str
    project: str  # name
    mac: str
    ip4: str
    ip6: str
    node: str  # id
    underlay: str  # its node's address
