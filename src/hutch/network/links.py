"""Links on the node, by netlink (pyroute2): a bridge per network, a TAP per micro-VM NIC, a veth
pair into a network namespace per container.

Every link hutch makes carries the alias `hutch` (and one of hutch's name prefixes), so that
`ours` finds them and nothing else: reconcile never removes a link hutch did not make.
"""

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hutch.model.errors import Conflict, Unavailable
from hutch.model.network import Attachment
from hutch.network.nft import BRIDGE_PREFIX, VXLAN_PORT

ALIAS = "hutch"
TAP_PREFIX = "ht-"
VETH_PREFIX = "hv-"
PEER_PREFIX = "hp-"  # the container end of a veth pair, until it is eth0 in its namespace
VXLAN_PREFIX = "hx-"
PREFIXES = (BRIDGE_PREFIX, TAP_PREFIX, VETH_PREFIX, PEER_PREFIX, VXLAN_PREFIX)
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF, NTF_MASTER = 0x02, 0x04
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
NTF_MASTER, NUD_NOARP = 0x04, 0x40  # `bridge fdb add ... master static`
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
T = TypeVar("T")


def bridge_name(vni: int) -> str:
    return f"{BRIDGE_PREFIX}{vni:x}"


def vxlan_name(vni: int) -> str:
    return f"{VXLAN_PREFIX}{vni:x}"


def bridge_mac(vni: int) -> str:
    """The gateway's MAC: the same on every node, so that it never has to leave the node."""
    return "02:68:6e:" + ":".join(f"{b:02x}" for b in vni.to_bytes(3, "big"))


def port_name(prefix: str, sandbox_id: str, index: int = 0) -> str:
    digest = hashlib.sha256(f"{sandbox_id}/{index}".encode()).hexdigest()
    return f"{prefix}{digest[:8]}"  # 11 characters: under IFNAMSIZ


def _sysctl(path: str, value: str) -> None:
    Path("/proc/sys/net", path).write_text(value)


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _check(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except NetlinkError as e:
        raise Unavailable(f"{what}: {os.strerror(e.code)}") from None


def enable_forwarding() -> None:
    """Routing between the bridges and the world (v6 too: a host that learns its own v6 route
    from router advertisements must set accept_ra=2 to keep doing so)."""
    _sysctl("ipv4/ip_forward", "1")
    _sysctl("ipv6/conf/all/forwarding", "1")


def ensure_bridge(ipr: IPRoute, att: Attachment, mtu: int = 1500) -> str:
    """The network's bridge, holding its gateway addresses; made if missing, left as is if not."""
    name = bridge_name(att.vni)
    if _index(ipr, name) is None:
        _refuse_clash(ipr, att)
        _check(
            f"creating bridge {name}",
            lambda: ipr.link(
                "add",
                ifname=name,
                kind="bridge",
                address=bridge_mac(att.vni),
                mtu=mtu,
                br_nf_call_arptables=0,
            ),
        )
    index = _index(ipr, name)
    assert index is not None
    ipr.link("set", index=index, ifalias=ALIAS)
    # Bridged IP packets meet hutch's inet table too (br_netfilter), with conntrack: security
    # groups filter what a sandbox's peers send it, on this node and over the overlay, and
    # let replies through (the bridge family has no conntrack on every kernel).
    _check(
        f"setting bridge {name}'s netfilter calls",
        lambda: ipr.link(
            "set", index=index, kind="bridge", br_nf_call_iptables=1, br_nf_call_ip6tables=1
        ),
    )
    _sysctl(f"ipv6/conf/{name}/addr_gen_mode", "1")  # no link-local address of its own
    _sysctl(f"ipv6/conf/{name}/accept_dad", "0")  # the gateway address works at once
    _sysctl(f"ipv6/conf/{name}/accept_ra", "0")
    # The node's own 127.0.0.1 reaches published ports: after DNAT, such packets route out of
    # the bridge with a 127/8 source (masqueraded right after). Packets *from* sandboxes to 127/8
    # are dropped before routing (nft's raw chain).
    _sysctl(f"ipv4/conf/{name}/route_localnet", "1")
    # "replace" is idempotent: no listing of the node's addresses first (a dump of every
    # address on the node, per call, made wiring n sandboxes cost n^2).
    for addr, prefix in ((att.gateway4, att.prefix4), (att.gateway6, att.prefix6)):
        try:
            ipr.addr("replace", index=index, address=addr, prefixlen=prefix)
        except NetlinkError as e:
            raise Unavailable(f"adding {addr}/{prefix} to {name}: {os.strerror(e.code)}") from None
    ipr.link("set", index=index, state="up")
    return name


def _refuse_clash(ipr: IPRoute, att: Attachment) -> None:
    """Refuse a network whose subnet overlaps the node's own: an address or a route of a link
    that is not hutch's (its LAN, the underlay, a VPN; not the default route). The bridge's
    connected route would take the node's own traffic to those addresses (to the controller,
    a registry, other nodes, its gateway) into a tenant's network, a more specific prefix
    winning outright. The controller knows neither the node's routes nor its LAN."""
    subnets = [
        ipaddress.ip_network(f"{gateway}/{prefix}", strict=False)
        for gateway, prefix in ((att.gateway4, att.prefix4), (att.gateway6, att.prefix6))
        if gateway
    ]
    hutch = {i for i in (_index(ipr, n) for n in ours(ipr)) if i is not None}
    taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, table=254):
            length = int(route["dst_len"])
            if length == 0 or route.get_attr("RTA_OIF") in hutch:
                continue
            dst = route.get_attr("RTA_DST")
            if dst:
                taken.append(ipaddress.ip_network(f"{dst}/{length}", strict=False))
        for addr in ipr.get_addr(family=family):
            if addr["index"] not in hutch and addr.get_attr("IFA_ADDRESS"):
                taken.append(ipaddress.ip_network(addr.get_attr("IFA_ADDRESS")))
    for subnet in subnets:
        for other in taken:
            if subnet.version == other.version and subnet.overlaps(other):
                raise Conflict(
                    f"network subnet {subnet} overlaps this node's own addresses or routes: "
                    "a network of another subnet can run here"
                )


def enslave(ipr: IPRoute, name: str, bridge: str, mtu: int, mac: str = "") -> None:
    """`mac`: the sandbox behind this port (none for the overlay's port: set_peers adds those)."""
    index, master = _index(ipr, name), _index(ipr, bridge)
    if index is None or master is None:
        raise Unavailable(f"link {name} or bridge {bridge} vanished while wiring it")
    _check(
        f"attaching {name} to {bridge}",
        lambda: ipr.link("set", index=index, master=master, ifalias=ALIAS, mtu=mtu, state="up"),
    )
    # No learning from the wire: a sandbox cannot poison the bridge's table with others' MACs
    # (the nft port chain drops such frames too); flooding still reaches the rightful owner.
    with contextlib.suppress(NetlinkError):
        ipr.brport("set", index=index, learning=0)
    # ...so the bridge is told where the sandbox's own MAC is: without that entry every frame to
    # it would be flooded to every port of its network, a cost per packet that grows with the
    # number of machines (and shows each of them the others' traffic). It goes with the port.
    if not mac:
        return
    _check(
        f"adding {mac} to {bridge}'s forwarding table",
        lambda: ipr.fdb("replace", ifindex=index, lladdr=mac, state=NUD_NOARP, flags=NTF_MASTER),
    )


def create_tap(name: str) -> int:
    """Create TAP `name` for a guest NIC, down and on no bridge (`enslave` puts it on one);
    return an open descriptor of it, for QEMU.

    The TAP is not persistent: it goes when the last descriptor closes (QEMU's, when it exits),
    so a dead micro-VM leaves no link behind even if nobody cleans up.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _in_netns(path: Path | None, fn: Callable[[], T], new: bool = False) -> T:
    """Run `fn` in a thread of its own inside the network namespace at `path` (or in a new one
    when `new`): network namespaces are per thread, so the caller's stays as it was."""
    result: list[Any] = []

    def enter() -> None:
        if new:
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        elif path is not None:
            nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(nsfd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {path}")
            finally:
                os.close(nsfd)

    def run() -> None:
        try:
            enter()
            result.append((True, fn()))
        except BaseException as e:
            result.append((False, e))

    thread = threading.Thread(target=run, name="hutch-netns")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def run_in(netns: Path | None, fn: Callable[[], T]) -> T:
    """`fn()` inside the network namespace at `netns` (None: this thread's own)."""
    return fn() if netns is None else _in_netns(netns, fn)


def create_netns(path: Path) -> None:
    """A new network namespace, kept alive by a bind mount at `path` (like `ip netns add`)."""
    path.touch(mode=0o444)

    def bind() -> None:
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        if _libc.mount(src, str(path).encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind-mounting a network namespace on {path}")

    _in_netns(None, bind, new=True)


def remove_netns(path: Path) -> None:
    if _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"unmounting {path}")
    path.unlink(missing_ok=True)


def create_veth(
    ipr: IPRoute, name: str, bridge: str, netns: Path, att: Attachment, *, mtu: int = 1500
) -> None:
    """A veth pair: `name` on `bridge`, its peer as eth0 in `netns` with the attachment's MAC,
    addresses and default routes. Set from here: the container gets no CAP_NET_ADMIN over it."""
    peer = PEER_PREFIX + name[len(VETH_PREFIX) :]
    _check(
        f"creating veth {name}",
        lambda: ipr.link("add", ifname=name, kind="veth", mtu=mtu, peer={"ifname": peer}),
    )
    try:
        enslave(ipr, name, bridge, mtu, att.mac)
        peer_index = _index(ipr, peer)
        nsfd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("set", index=peer_index, net_ns_fd=nsfd)
        finally:
            os.close(nsfd)
        _in_netns(netns, lambda: _configure_inside(peer, att, mtu))
    except BaseException:
        delete_link(ipr, name)
        raise


def _configure_inside(peer: str, att: Attachment, mtu: int) -> None:
    with IPRoute() as ipr:
        lo = _index(ipr, "lo")
        ipr.link("set", index=lo, state="up")
        index = _index(ipr, peer)
        assert index is not None
        ipr.link("set", index=index, ifname="eth0", address=att.mac, mtu=mtu)
        # The namespace belongs to the host's user namespace, not the container's: its root has
        # no CAP_NET_BIND_SERVICE or CAP_NET_RAW here. As Docker does: low ports and ping for all.
        _sysctl("ipv4/ip_unprivileged_port_start", "0")
        _sysctl("ipv4/ping_group_range", "0 2147483647")
        _sysctl("ipv6/conf/eth0/accept_dad", "0")
        _sysctl("ipv6/conf/eth0/accept_ra", "0")
        ipr.link("set", index=index, state="up")
        ipr.addr("add", index=index, address=att.ip4, prefixlen=att.prefix4)
        ipr.addr("add", index=index, address=att.ip6, prefixlen=att.prefix6)
        ipr.route("add", dst="0.0.0.0/0", gateway=att.gateway4, oif=index)
        ipr.route("add", dst="::/0", gateway=att.gateway6, oif=index, family=10)


def detach(ipr: IPRoute, name: str) -> None:
    """Take link `name` off its bridge, down (its bridge table entries go with the port)."""
    index = _index(ipr, name)
    if index is not None:
        with contextlib.suppress(NetlinkError):  # gone meanwhile (a TAP whose QEMU exited)
            ipr.link("set", index=index, master=0, state="down")


def delete_link(ipr: IPRoute, name: str) -> None:
    index = _index(ipr, name)
    if index is not None:
        with contextlib.suppress(NetlinkError):  # gone meanwhile (a TAP whose QEMU exited)
            ipr.link("del", index=index)


# The link group (`ip link ... group`) delete_links gathers links in to delete them at once.
DELETE_GROUP = 0x68757400  # "hut\0"


def delete_links(ipr: IPRoute, names: Iterable[str]) -> None:
    """Delete these links (those that exist). A link deleted alone costs the kernel a wait for
    RCU grace periods (about 20 ms; a thousand: 20 s and more); links deleted as one group
    are unregistered together, in one such wait. The group is one no other link is in."""
    names = set(names)
    if len(names) < 4:
        for name in sorted(names):
            delete_link(ipr, name)
        return
    used: set[int] = set()
    indices: list[int] = []
    for link in ipr.get_links():
        if link.get_attr("IFLA_IFNAME") in names:
            indices.append(int(link["index"]))
        else:
            used.add(int(link.get_attr("IFLA_GROUP") or 0))
    group = next(g for g in range(DELETE_GROUP, DELETE_GROUP + len(used) + 1) if g not in used)
    for index in indices:
        with contextlib.suppress(NetlinkError):  # gone meanwhile
            ipr.link("set", index=index, group=group)
    try:
        ipr.link("del", group=group)
    except NetlinkError:  # one at a time, then
        for name in sorted(names):
            delete_link(ipr, name)


def ours(ipr: IPRoute) -> Iterator[str]:
    """Names of the links hutch made on this node."""
    for link in ipr.get_links():
        name = str(link.get_attr("IFLA_IFNAME"))
        if name.startswith(PREFIXES) and link.get_attr("IFLA_IFALIAS") == ALIAS:
            yield name


# -- the overlay: a VXLAN device per network, static FDB and neighbour entries --------------------


@dataclass(frozen=True, slots=True)
class Remote:
    """A machine on another node, as one network's VXLAN device sees it."""

    mac: str  # lower case
    ip4: str
    ip6: str
    underlay: str  # its node's IP address (the VXLAN packets' destination)


def ensure_vxlan(ipr: IPRoute, vni: int, bridge: str, local: str, mtu: int = 1500) -> str:
    """The network's VXLAN device, on its bridge: VNI `vni`, UDP 4789, from `local`; no learning
    from the wire (every entry is static, from the controller) and ARP/NDP answered from its
    neighbour table (`proxy`). Made if missing; a device of that name with other settings (a
    different underlay address) is made anew."""
    name = vxlan_name(vni)
    v6 = ipaddress.ip_address(local).version == 6
    index = _index(ipr, name)
    if index is not None and _vxlan_settings(ipr, index) != (vni, ipaddress.ip_address(local)):
        delete_link(ipr, name)
        index = None
    if index is None:
        where = {"vxlan_local6": local} if v6 else {"vxlan_local": local}
        _check(
            f"creating VXLAN {name}",
            lambda: ipr.link(
                "add",
                ifname=name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_port=VXLAN_PORT,
                vxlan_learning=0,
                vxlan_proxy=1,
                mtu=mtu,
                **where,
            ),
        )
    enslave(ipr, name, bridge, mtu)
    # The bridge answers ARP/NDP for what it knows instead of sending it over the overlay.
    with contextlib.suppress(NetlinkError):
        ipr.brport("set", index=_index(ipr, name), neigh_suppress=1)
    return name


def _vxlan_settings(ipr: IPRoute, index: int) -> tuple[int, object] | None:
    (link,) = ipr.get_links(index)
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    local = data.get_attr("IFLA_VXLAN_LOCAL") or data.get_attr("IFLA_VXLAN_LOCAL6") or ""
    try:
        return int(data.get_attr("IFLA_VXLAN_ID")), ipaddress.ip_address(local)
    except ValueError:
        return None


def sync_remotes(ipr: IPRoute, vni: int, remotes: Iterable[Remote]) -> None:
    """Make the entries of network `vni`'s VXLAN device exactly `remotes`: per MAC a forwarding
    entry on the device (MAC -> its node) and one on the bridge (MAC -> the device), per address
    a permanent neighbour entry (IP -> MAC). No all-zero (flooding) entry: a frame for a MAC
    nobody announced goes nowhere. Entries already right are left alone."""
    name = vxlan_name(vni)
    index = _index(ipr, name)
    if index is None:
        return
    want_fdb = {(r.mac.lower(), r.underlay) for r in remotes}
    want_master = {mac for mac, _ in want_fdb}
    want_neigh = {(ip, r.mac.lower()) for r in remotes for ip in (r.ip4, r.ip6) if ip}
    have_fdb: set[tuple[str, str]] = set()
    have_master: set[str] = set()
    for entry in ipr.fdb("dump", ifindex=index):
        if entry["ifindex"] != index:
            continue
        mac = str(entry.get_attr("NDA_LLADDR") or "").lower()
        if entry["flags"] & NTF_SELF:  # the device's own (its remote); the bridge's are 0
            if entry.get_attr("NDA_DST") is not None:
                have_fdb.add((mac, str(entry.get_attr("NDA_DST"))))
        elif entry["state"] & NUD_NOARP and not entry["state"] & NUD_PERMANENT:
            have_master.add(mac)  # static (permanent: the port's own address)
    have_neigh: set[tuple[str, str]] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for entry in ipr.get_neighbours(family=family, ifindex=index):
            if entry["ifindex"] == index and entry["state"] & NUD_PERMANENT:
                ip = str(entry.get_attr("NDA_DST"))
                have_neigh.add((ip, str(entry.get_attr("NDA_LLADDR") or "").lower()))
    for ip, mac in have_neigh - want_neigh:
        with contextlib.suppress(NetlinkError):
            ipr.neigh("del", ifindex=index, dst=ip, lladdr=mac)
    for mac in have_master - want_master:
        with contextlib.suppress(NetlinkError):
            ipr.fdb("del", ifindex=index, lladdr=mac, flags=NTF_MASTER)
    for mac, dst in have_fdb - want_fdb:
        with contextlib.suppress(NetlinkError):
            ipr.fdb("del", ifindex=index, lladdr=mac, dst=dst, flags=NTF_SELF)
    for mac, dst in sorted(want_fdb - have_fdb):
        _check(
            f"adding {mac} -> {dst} to {name}",
            partial(
                ipr.fdb,
                "append",
                ifindex=index,
                lladdr=mac,
                dst=dst,
                flags=NTF_SELF,
                state=NUD_PERMANENT,
            ),
        )
    for mac in sorted(want_master - have_master):
        _check(
            f"adding {mac} to {name}'s bridge",
            partial(
                ipr.fdb, "replace", ifindex=index, lladdr=mac, flags=NTF_MASTER, state=NUD_NOARP
            ),
        )
    for ip, mac in sorted(want_neigh - have_neigh):
        _check(
            f"adding neighbour {ip} on {name}",
            partial(ipr.neigh, "replace", ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT),
        )
