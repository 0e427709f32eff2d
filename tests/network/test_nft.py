"""The ruleset is a pure function of the desired state; nft takes it as one transaction."""

import json
import subprocess

from hutch.network import nft
from hutch.network.nft import Bridge, Desired, Port, Published

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
