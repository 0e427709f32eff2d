"""hutch's tables as nft lists them, for comparing two histories' results."""

import json
from typing import Any


def canonical(listing: dict[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    """`nft -j list table ...` output without what depends on how the tables came about:
    handles, and the order of chains, sets and set elements (nft's lookups do not depend on
    it). Rules stay in their order, per chain."""
    objects: list[str] = []
    rules: dict[str, list[str]] = {}
    for obj in listing["nftables"]:
        ((kind, body),) = obj.items()
        if kind == "metainfo":
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if kind == "rule":
            chain = f"{body['family']} {body['chain']}"
            rules.setdefault(chain, []).append(json.dumps(body["expr"], sort_keys=True))
            continue
        if "elem" in body:
            body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
        objects.append(json.dumps({kind: body}, sort_keys=True))
    return sorted(objects), rules
