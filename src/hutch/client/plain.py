"""Listings as the controller sends them: plain JSON objects, not wire models.

For what only prints a few fields and exits (the CLI's `hutch ps`): it imports httpx and no
pydantic, wire models, asyncio or websockets, which take longer to import than the whole
listing takes to fetch. Everything else, and every program that keeps running, uses `Client`,
whose models check what they parse.

    for m in machines(state=["running"]):
        print(m["id"], m["name"], m["state"])
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from hutch.client._calls import Call, Endpoint, listing, next_page
from hutch.client.config import resolve


def machines(
    state: str | Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    all: bool = False,
    *,
    project: str | None = None,
    timeout: float = 30.0,
) -> Iterator[dict[str, Any]]:
    """What `Client(project=project).machines.list(state, labels, all)` lists, as the JSON
    objects the API sends (docs/api.md, MachineView), fetched page by page as you iterate;
    it finds the controller, and refuses, as `Client` does."""
    context = resolve(None, None, project)
    endpoint = Endpoint(context.url, context.token, context.project, timeout)
    # Over plain HTTP nothing is verified, so no TLS context is made (loading the CA bundle
    # takes ~20 ms); every call goes to base_url, and redirects are not followed.
    verify = context.url.startswith("https:")
    with httpx.Client(
        base_url=context.url, headers=endpoint.headers, timeout=timeout, verify=verify
    ) as http:
        call: Call | None = listing(state, labels, all, None)
        while call is not None:
            try:
                response = http.request(**endpoint.http_args(call))
            except httpx.TransportError as e:
                raise endpoint.unreachable(e) from None
            if response.status_code >= 400:
                from hutch.client import _core  # noqa: PLC0415  (a refusal: parsed as the SDK does)

                _core.check(response.status_code, response.content)
            page = json.loads(response.content)
            yield from page["items"]
            call = next_page(call, page.get("next"))
