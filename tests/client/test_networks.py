"""Networks, security groups and published ports through the SDK, sync and async alike."""

from pathlib import Path

import pytest

from hutch.client import AsyncClient, Client, Conflict, Invalid, NotFound
from tests.controller import BUSYBOX_CONFIG, Controller, new_project
from tests.images.ocibuild import write_oci_layout


def test_networks_and_machines(client: Client) -> None:
    net = client.networks.create("back", subnet="192.168.66.0/24", egress="allow-list",
                                 egress_allow=["203.0.113.0/24"])  # fmt: skip
    assert net.subnet4 == "192.168.66.0/24" and net.egress_allow == ["203.0.113.0/24"]
    m = client.machines.create(
        "busybox", ["sleep", "60"], name="two", networks=["back", "default"],
        ports=["18090:80"], security_groups=(), start=False, runtime="container",
    )  # fmt: skip
    assert m.networks == ["back", "default"] and m.addresses[0].ip4 == "192.168.66.2"
    assert [(p.host_port, p.port, p.protocol) for p in m.ports] == [(18090, 80, "tcp")]
    assert client.machines.get("two").addresses == m.addresses
    assert {n.name for n in client.networks.list()} == {"back", "default"}
    assert client.networks.get("back").machines == 1
    with pytest.raises(Invalid, match="overlaps network back"):
        client.networks.create("b2", subnet="192.168.66.0/23")
    six = client.networks.create("six", subnet6="fd66:1:2:3::/64")
    assert (six.subnet6, six.gateway6) == ("fd66:1:2:3::/64", "fd66:1:2:3::1")
    with pytest.raises(Invalid, match="is one /64"):
        client.networks.create("b2", subnet6="fd66:1:2::/48")
    with pytest.raises(Invalid, match="overlaps network six"):
        client.networks.create("b2", subnet6="fd66:1:2:3::/64")
    client.networks.delete("six")
    with pytest.raises(Invalid, match="out of range"):
        client.machines.create("busybox", ports=["70000:80"], runtime="container")
    with pytest.raises(Conflict, match="machine"):
        client.networks.delete("back")
    client.machines.delete("two")
    client.networks.delete("back")
    with pytest.raises(NotFound):
        client.networks.get("back")


def test_security_groups(client: Client, controller: Controller) -> None:
    web = client.security_groups.create("web")
    client.security_groups.create("db")
    got = client.security_groups.add_rule("db", "ingress", "tcp", 5432, "web")
    assert got.rules[-1].remote_group == web.id and got.rules[-1].port_min == 5432
    got = client.security_groups.add_rule("web", "ingress", "tcp", "8000-8080", "0.0.0.0/0")
    assert (got.rules[-1].port_min, got.rules[-1].port_max) == (8000, 8080)
    with pytest.raises(Invalid):
        client.security_groups.add_rule("web", "ingress", "icmp", 80, "0.0.0.0/0")
    # Port 0 is refused, not taken as "every port"; a remote is required, and an address is
    # not a group's name; next to them the same rule with port 1 and a /32.
    with pytest.raises(Invalid, match="ports '0' are not within 1-65535"):
        client.security_groups.add_rule("web", "ingress", "tcp", 0, "0.0.0.0/0")
    with pytest.raises(Invalid, match="a rule needs a remote"):
        client.security_groups.add_rule("web", "ingress", "tcp", 80)
    with pytest.raises(Invalid, match=r"'10\.0\.0\.5/32' for it alone"):
        client.security_groups.add_rule("web", "ingress", "tcp", 80, "10.0.0.5")
    got = client.security_groups.add_rule("web", "ingress", "tcp", 1, "10.0.0.5/32")
    assert (got.rules[-1].port_min, got.rules[-1].remote_cidr) == (1, "10.0.0.5/32")
    with pytest.raises(Invalid, match="not a private range"):
        client.networks.create("zero", subnet="0.0.0.0/24")
    client.networks.delete(client.networks.create("cgnat", subnet="100.64.8.0/24").id)
    other = new_project(controller)
    with controller.client(other) as theirs:
        theirs.security_groups.create("theirs")
        with pytest.raises(NotFound):  # another project's group does not exist for it
            theirs.security_groups.get("web")
    with pytest.raises(NotFound):
        client.security_groups.add_rule("web", "ingress", remote="theirs")
    assert [g.name for g in client.security_groups.list()] == ["web", "db"]
    db_rule = client.security_groups.get("db").rules[0].id
    assert client.security_groups.remove_rule("db", db_rule).rules == []
    client.security_groups.delete("db")


async def test_the_async_client_does_the_same(aclient: AsyncClient) -> None:
    net = await aclient.networks.create("async-net", subnet6="fd66:4:5:6::/64")
    assert net.subnet4.endswith("/24") and net.subnet6 == "fd66:4:5:6::/64"
    assert [n.name async for n in aclient.networks.list()] == ["async-net"]
    g = await aclient.security_groups.create("g")
    g = await aclient.security_groups.add_rule("g", "egress", "udp", 53, "0.0.0.0/0")
    assert [r.protocol for r in g.rules] == ["udp"]
    m = await aclient.machines.create("busybox", networks=["async-net"], security_groups=["g"],
                                      start=False, runtime="container")  # fmt: skip
    assert m.networks == ["async-net"] and m.security_groups == ["g"]
    plan = await aclient.machines.explain(
        "busybox", ports=["127.0.0.1:18091:80"], runtime="container"
    )
    assert plan.placed
    with pytest.raises(NotFound):
        await aclient.machines.create("busybox", networks=["nope"], runtime="container")
    await aclient.machines.delete(m)
    await aclient.security_groups.delete("g")
    await aclient.networks.delete("async-net")
    with pytest.raises(NotFound):
        await aclient.networks.get("async-net")


def test_an_images_exposed_ports_are_shown(
    client: Client, tmp_path: Path, busybox_rootfs: Path
) -> None:
    config = {**BUSYBOX_CONFIG, "ExposedPorts": {"8080/tcp": {}, "53/udp": {}}}
    write_oci_layout(tmp_path / "layout", [busybox_rootfs], config)
    [image] = client.images.import_(tmp_path / "layout", names=["team/web:1"])
    assert image.exposed_ports == ["53/udp", "8080/tcp"]
    assert client.images.get("team/web:1").exposed_ports == ["53/udp", "8080/tcp"]
