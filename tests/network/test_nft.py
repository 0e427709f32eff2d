"""The ruleset is a pure function of the desired state; nft takes it as one transaction."""

import itertools
import json
import random
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import ANY

from hutch.network import nft
from hutch.network.nft import Allow, Bridge, Desired, Overlay, Port, Published
from tests.network.tables import canonical

DESIRED = Desired(
    bridges=(
        Bridge("hn-7", "10.96.3.1", 24, "fd00::1", 64),
        Bridge("hn-8", "10.96.4.1", 24, "fd01::1", 64, "allow-list", ("192.0.2.0/24",)),
        Bridge("hn-9", "10.96.5.1", 24, "fd02::1", 64, "deny"),
    ),
    ports=(
        Port("ht-b", "hn-7", "02:00:00:00:00:06", "10.96.3.6", "fd00::6"),
        Port("ht-a", "hn-7", "02:00:00:00:00:05", "10.96.3.5", "fd00::5"),
    ),
    published=(
        Published(8080, "tcp", "10.96.3.5", 80),
        Published(5353, "udp", "10.96.3.6", 53, "127.0.0.1"),
    ),
    blocked=("192.168.1.10/32",),
)


def nft_in_fresh_netns(script: str) -> str:
    """Run `script` (sh) in a network namespace of its own: the host's tables are not touched."""
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, check=True
    )
    return proc.stdout


def test_the_ruleset_is_deterministic_and_order_free() -> None:
    swapped = Desired(
        bridges=DESIRED.bridges[::-1],
        ports=DESIRED.ports[::-1],
        published=DESIRED.published[::-1],
        blocked=DESIRED.blocked,
    )
    assert nft.ruleset(DESIRED) == nft.ruleset(swapped)


def test_every_port_has_its_own_chain_reached_by_one_map_lookup() -> None:
    batch = nft.ruleset(DESIRED)["nftables"]
    maps = {c["add"]["map"]["name"]: c["add"]["map"] for c in batch if "map" in c.get("add", {})}
    assert maps["ports"]["elem"] == [
        ["ht-a", {"jump": {"target": "port-ht-a"}}],
        ["ht-b", {"jump": {"target": "port-ht-b"}}],
    ]
    assert maps["egress"]["elem"][2] == ["hn-9", {"drop": None}]
    chains = [c["add"]["chain"]["name"] for c in batch if "chain" in c.get("add", {})]
    assert {"port-ht-a", "port-ht-b", "in-ht-a", "egress-hn-8"} <= set(chains)

    # The rules' count does not depend on the machines: only the per-port chains do.
    def base_rules(d: Desired) -> int:
        return sum(
            1
            for c in nft.ruleset(d)["nftables"]
            if "rule" in c.get("add", {}) and not c["add"]["rule"]["chain"].startswith("port-")
        )

    one = Desired(DESIRED.bridges, DESIRED.ports[:1], DESIRED.published, DESIRED.blocked)
    assert base_rules(one) == base_rules(DESIRED)


def test_the_link_local_address_is_the_kernels_eui64() -> None:
    assert DESIRED.ports[1].link_local6 == "fe80::ff:fe00:5"


def test_nft_applies_it_atomically_again_and_again_and_removes_only_its_tables() -> None:
    batch = json.dumps(nft.ruleset(DESIRED))
    removal = json.dumps(nft.removal())
    out = nft_in_fresh_netns(
        "nft add table inet other && nft add chain inet other c && "
        f"echo '{batch}' | nft -j -f - && echo '{batch}' | nft -j -f - && "
        "nft list ruleset && echo ==== && "
        f"echo '{removal}' | nft -j -f - && echo '{removal}' | nft -j -f - && nft list ruleset"
    )
    applied, removed = out.split("====")
    assert applied.count("table inet hutch") == 1
    assert applied.count("table bridge hutch") == 1
    assert "chain port-ht-a {" in applied
    assert "tcp . 8080 : 10.96.3.5" in applied
    assert "hutch" not in removed
    assert "table inet other" in removed


def rules_of(batch: list[dict[str, Any]], chain: str) -> list[list[dict[str, Any]]]:
    return [
        c["add"]["rule"]["expr"]
        for c in batch
        if "rule" in c.get("add", {})
        and c["add"]["rule"]["family"] == "inet"
        and c["add"]["rule"]["chain"] == chain
    ]


def inet_maps(batch: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["name"]: o
        for c in batch
        for kind in ("map", "set")
        if (o := c.get("add", {}).get(kind)) is not None and o["family"] == "inet"
    }


GUARDED = Desired(
    bridges=DESIRED.bridges,
    ports=(
        Port("ht-a", "hn-7", "02:00:00:00:00:05", "10.96.3.5", "fd00::5",
             ingress=(Allow("tcp", 80, 80, ("0.0.0.0/0",)),),
             egress=(Allow("tcp", 8080, 8080, ("10.96.3.0/24", "fd00::/64")),)),
        Port("ht-b", "hn-7", "02:00:00:00:00:06", "10.96.3.6", "fd00::6",
             ingress=(Allow("tcp", 22, 22, ("10.0.0.0/8",)),)),
        Port("ht-c", "hn-7", "02:00:00:00:00:07", "10.96.3.7", "fd00::7"),
    ),
)  # fmt: skip


def test_egress_rules_are_a_chain_per_port_reached_by_bridge_and_source_address() -> None:
    batch = nft.ruleset(GUARDED)["nftables"]
    maps = inet_maps(batch)
    # Only the port whose groups have egress rules is in the egress maps: b (ingress rules
    # only) and c (no group) send as their network lets them.
    assert maps["egress4"]["elem"] == [
        [{"concat": ["hn-7", "10.96.3.5"]}, {"jump": {"target": "out-ht-a"}}]
    ]
    assert maps["egress6"]["elem"] == [
        [{"concat": ["hn-7", "fd00::5"]}, {"jump": {"target": "out-ht-a"}}]
    ]
    assert [e[0]["concat"][1] for e in maps["ingress4"]["elem"]] == ["10.96.3.5", "10.96.3.6"]
    forward = rules_of(batch, "forward")
    lookups = [r[0]["vmap"] for r in forward if "vmap" in r[0]]
    # ingress (by destination), then egress (by source), both before the network's own checks
    assert [(v["data"], v["key"]["concat"][1]["payload"]["field"]) for v in lookups[:4]] == [
        ("@ingress4", "daddr"), ("@ingress6", "daddr"),
        ("@egress4", "saddr"), ("@egress6", "saddr"),
    ]  # fmt: skip
    out = rules_of(batch, "out-ht-a")
    assert out[0][0]["match"]["right"] == ["established", "related"]  # replies leave
    allowed = [r for r in out if r[-1] == {"return": None} and len(r) == 4]
    assert [r[0]["match"]["left"]["payload"] for r in allowed] == [
        {"protocol": "ip", "field": "daddr"}, {"protocol": "ip6", "field": "daddr"},
    ]  # fmt: skip
    assert all(r[2]["match"]["right"] == 8080 for r in allowed)
    assert out[-1] == [{"drop": None}]
    # ingress chains match the source
    assert rules_of(batch, "in-ht-b")[2][0]["match"]["left"]["payload"]["field"] == "saddr"


def test_vxlan_is_taken_from_peer_nodes_only() -> None:
    overlay = Overlay(vnis=(8, 7), peers=("192.0.2.2", "2001:db8::2", "192.0.2.3"))
    batch = nft.ruleset(replace(DESIRED, overlay=overlay))["nftables"]
    (jump,) = [
        r for r in rules_of(batch, "input") if r[-1] == {"jump": {"target": "from-underlay"}}
    ]
    assert jump[1]["match"]["right"] == 4789
    assert jump[2]["match"]["right"] == {"set": [7, 8]}  # the hosted networks' VNIs only
    sets = inet_maps(batch)
    assert sets["underlay_peers4"]["elem"] == ["192.0.2.2", "192.0.2.3"]
    assert sets["underlay_peers6"]["elem"] == ["2001:db8::2"]
    assert rules_of(batch, "from-underlay")[-1] == [{"drop": None}]
    # No overlay, no rule: UDP 4789 that is not hutch's is not hutch's business.
    assert "from-underlay" not in json.dumps(nft.ruleset(DESIRED))


def test_nft_takes_the_groups_and_the_overlay() -> None:
    overlay = Overlay(vnis=(7,), peers=("192.0.2.2",))
    batch = json.dumps(nft.ruleset(replace(GUARDED, overlay=overlay)))
    empty = json.dumps(nft.ruleset(replace(GUARDED, overlay=Overlay(vnis=(7,)))))
    out = nft_in_fresh_netns(
        f"echo '{empty}' | nft -j -f - && echo '{batch}' | nft -j -f - && nft list table inet hutch"
    )
    assert "iifname . ip saddr vmap @egress4" in out
    assert "chain out-ht-a {" in out and "ip daddr 10.96.3.0/24 tcp dport 8080 return" in out
    assert "udp dport 4789 @th,96,24 0x7 jump from-underlay" in out
    assert "ip saddr @underlay_peers4 accept" in out


def random_state(rng: random.Random) -> Desired:
    """A node's state drawn from a small pool, so that consecutive draws share most of it:
    ports come and go, change groups and addresses; networks, published ports, blocked
    addresses and the overlay come, go and change too."""
    bridges = {
        "hn-7": Bridge("hn-7", "10.96.3.1", 24, "fd00::1", 64),
        "hn-8": Bridge("hn-8", "10.96.4.1", 24, "fd01::1", 64,
                       *rng.choice([("nat", ()), ("allow-list", ("192.0.2.0/24",)),
                                    ("allow-list", ("198.51.100.0/24", "2001:db8::/32"))])),
        "hn-9": Bridge("hn-9", "10.96.5.1", 24, "fd02::1", 64, rng.choice(["deny", "nat"])),
    }  # fmt: skip
    rules = [
        None,
        (Allow("tcp", 80, 80, ("0.0.0.0/0",)),),
        (Allow("udp", 5000, 5100, ("10.96.3.0/24", "fd00::/64")), Allow("icmp", 0, 0, ("::/0",))),
        (),
    ]
    ports = []
    for i in rng.sample(range(12), rng.randint(1, 12)):
        bridge = f"hn-{7 + i % 3}"
        host = 10 + i + rng.choice([0, 0, 0, 100])  # now and then an address of its own
        net = bridges[bridge].gateway4.rsplit(".", 1)[0]
        mac, ip6 = f"02:00:00:00:00:{host:02x}", f"fd0{i % 3}::{host:x}"
        ingress, egress = rng.choice(rules), rng.choice(rules)
        ports.append(Port(f"ht-{i}", bridge, mac, f"{net}.{host}", ip6, ingress, egress))
    published = [
        Published(8000 + i, rng.choice(["tcp", "udp"]), p.ip4, 80, rng.choice(["", "127.0.0.1"]))
        for i, p in enumerate(ports)
        if rng.random() < 0.3
    ]
    vnis = tuple(sorted({int(p.bridge[3:]) for p in ports}))
    overlay = None
    if rng.random() < 0.7:
        peers = rng.sample(["192.0.2.2", "192.0.2.3", "2001:db8::2"], rng.randint(0, 3))
        overlay = Overlay(vnis, tuple(peers))
    blocked = tuple(rng.sample(["192.168.1.10/32", "10.0.0.0/8", "2001:db8:1::/48"], 2))
    return Desired(tuple(bridges[b] for b in sorted({p.bridge for p in ports})), tuple(ports),
                   tuple(published), blocked, overlay)  # fmt: skip


def listing_after(tmp_path: Path, name: str, batches: list[Any]) -> Any:
    """hutch's tables as nft lists them after these batches, in a namespace of their own."""
    files = []
    for i, batch in enumerate(batches):
        files.append(tmp_path / f"{name}-{i}.json")
        files[-1].write_text(json.dumps(batch))
    script = " && ".join(f"nft -j -f {f}" for f in files)
    out = nft_in_fresh_netns(
        f"{script} && nft -j list table bridge hutch && nft -j list table inet hutch"
    )
    listed: list[Any] = []
    for line in out.splitlines():
        listed += json.loads(line)["nftables"]
    return canonical({"nftables": listed})


def test_changes_end_in_exactly_the_tables_a_whole_ruleset_makes(tmp_path: Path) -> None:
    for seed in range(4):
        rng = random.Random(seed)
        states = [random_state(rng) for _ in range(25)]
        batches = [nft.ruleset(states[0])]
        for old, new in itertools.pairwise(states):
            batch = nft.changes(old, new)
            if batch is not None:
                batches.append(batch)
            else:
                assert nft.ruleset(old) == nft.ruleset(new)
        # one transaction each: no command would replace a table
        assert all({"delete": {"table": ANY}} not in b["nftables"] for b in batches[1:])
        incremental = listing_after(tmp_path, f"steps{seed}", batches)
        whole = listing_after(tmp_path, f"whole{seed}", [nft.ruleset(states[-1])])
        assert incremental == whole, seed


def many_ports(n: int, **kw: Any) -> tuple[Port, ...]:
    return tuple(
        Port(f"ht-{i}", "hn-7", f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
             f"10.96.{i >> 8}.{i & 255}", f"fd00::{i:x}", **kw)
        for i in range(2, n + 2)
    )  # fmt: skip


def test_a_change_costs_what_changed_not_what_is_there() -> None:
    groups = (Allow("tcp", 80, 80, ("0.0.0.0/0",)),)
    sizes = []
    for n in (10, 500):
        ports = many_ports(n, ingress=groups)
        base = Desired(DESIRED.bridges, ports[1:], DESIRED.published, DESIRED.blocked)
        plug = nft.changes(base, replace(base, ports=ports))
        unplug = nft.changes(replace(base, ports=ports), base)
        regroup = nft.changes(
            base, replace(base, ports=(replace(ports[1], ingress=()), *ports[2:]))
        )
        assert plug is not None and unplug is not None and regroup is not None
        # The same commands whatever the number of ports: the new port's chains and elements
        text = json.dumps(plug)
        assert "ht-2" in text and "ht-3" not in text
        sizes.append([len(json.dumps(b)) for b in (plug, unplug, regroup)])
        assert [c for c in unplug["nftables"] if "delete" in c and "chain" in c["delete"]] == [
            {"delete": {"chain": {"family": f, "table": "hutch", "name": name}}}
            for f, name in (("bridge", "port-ht-2"), ("bridge", "in-ht-2"), ("inet", "in-ht-2"))
        ]
        # A group change: that port's chain, flushed and refilled; nothing else
        assert [next(iter(c)) for c in regroup["nftables"][1:]] == ["flush", "add", "add", "add"]
        assert all(c[k].get("chain", {}).get("name", c[k].get("rule", {}).get("chain")) ==
                   "in-ht-3" for c in regroup["nftables"][1:] for k in c)  # fmt: skip
    assert sizes[0] == sizes[1]
    assert nft.changes(DESIRED, DESIRED) is None


def test_the_blocked_addresses_are_named_sets_merged_and_replaced_atomically() -> None:
    # The cluster's nodes and controllers, inside and beside the operator's ranges.
    blocked = ("192.168.0.0/16", "192.168.1.10/32", "192.0.2.7/32", "2001:db8::8/128",
               "169.254.169.254/32")  # fmt: skip
    batch = nft.ruleset(replace(DESIRED, blocked=blocked))["nftables"]
    sets = inet_maps(batch)
    assert sets["blocked4"]["flags"] == ["interval"]
    assert sets["blocked4"]["elem"] == [
        {"prefix": {"addr": a, "len": n}}
        for a, n in (("127.0.0.0", 8), ("169.254.0.0", 16), ("192.0.2.7", 32),
                     ("192.168.0.0", 16))
    ]  # fmt: skip
    assert {"prefix": {"addr": "2001:db8::8", "len": 128}} in sets["blocked6"]["elem"]
    drops = [r for r in rules_of(batch, "from-sandbox") if r[-1] == {"drop": None}]
    assert [r[0]["match"]["right"] for r in drops[1:3]] == ["@blocked4", "@blocked6"]
    # One more node: the same rules, one more element (nothing else of the ruleset moves).
    more = nft.ruleset(replace(DESIRED, blocked=(*blocked, "192.0.2.9/32")))["nftables"]
    assert {"prefix": {"addr": "192.0.2.9", "len": 32}} in inet_maps(more)["blocked4"]["elem"]
    assert [c for c in more if "set" not in c.get("add", {})] == [
        c for c in batch if "set" not in c.get("add", {})
    ]
    # nft takes the overlapping ranges, again and again (one transaction each).
    first, second = json.dumps({"nftables": batch}), json.dumps({"nftables": more})
    out = nft_in_fresh_netns(
        f"echo '{first}' | nft -j -f - && echo '{second}' | nft -j -f - && "
        "nft list set inet hutch blocked4 && nft list chain inet hutch from-sandbox"
    )
    assert "192.0.2.7" in out and "192.0.2.9" in out and "192.168.0.0/16" in out
    assert "ip daddr @blocked4 drop" in out and "ip6 daddr @blocked6 drop" in out


def test_a_sleeping_sandboxs_ports_leave_the_dnat_maps_and_nothing_else_changes() -> None:
    """A sandbox that sleeps (NodeNetwork.set_asleep) has its published ports out of the DNAT
    maps, so new connections reach the node's socket on the port: element deletions, nothing
    else; waking adds them back the same way."""
    asleep = replace(DESIRED, published=DESIRED.published[1:])
    sleep, wake = nft.changes(DESIRED, asleep), nft.changes(asleep, DESIRED)
    assert sleep is not None and wake is not None
    for batch, verb in ((sleep, "delete"), (wake, "add")):
        commands = batch["nftables"][1:]
        assert {next(iter(c)) for c in commands} == {verb}
        assert {c[verb]["element"]["name"] for c in commands} == {"published", "published_port"}
    assert "8080" in json.dumps(sleep) and "5353" not in json.dumps(sleep)
