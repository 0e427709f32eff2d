"""The committed API description (docs/openapi.json) is the app's, and the app keeps to it:
schemathesis generates requests from the committed document against a real `hutch up`."""

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from hutch import config
from hutch.api.app import openapi_document
from tests.controller import Controller, controller, new_project

ROOT = Path(__file__).parents[2]
DOCUMENT = ROOT / "docs" / "openapi.json"
__all__ = ["controller"]  # the session fixture, for the tests here


def test_the_committed_document_is_the_apps() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        current = openapi_document(config.load(state_dir=Path(tmp)))
    committed = json.loads(DOCUMENT.read_text())
    assert current == committed, (
        "docs/openapi.json is out of date: regenerate it with `make openapi`"
    )


@pytest.fixture(scope="module")
def fuzzed(controller: Controller) -> tuple[str, str, str]:
    """(url, system token, project): a project on the real `hutch up` whose quota keeps what
    the fuzzer creates within this host (over it is a 403, not a 503 of a full node)."""
    project = new_project(controller, "fuzz")
    with controller.client(None) as admin:
        admin.projects.set_quota(project, machines=4, vcpus=4, memory_mib=2048, disk_mib=4096)
    return controller.url, controller.token, project


schema = schemathesis.openapi.from_path(DOCUMENT)


@schema.exclude(path="/v1/events").exclude(path_regex="^/agent/").parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_to_its_description(
    case: schemathesis.Case[Any], fuzzed: tuple[str, str, str]
) -> None:
    url, token, project = fuzzed
    if case.query is not None:
        case.query.setdefault("project", project)
    case.call_and_validate(
        base_url=url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
        # A request the schema allows may still be refused for what no schema says: bytes that
        # are no image archive, an image no registry has, a name already taken.
        excluded_checks=[positive_data_acceptance],
    )


# What the schema cannot say, and the store cannot hold: each hostile case is a generated request
# with one value replaced by one of these. Any answer but a 4xx is a bug (a 5xx is a crash, a
# 2xx took what nothing may hold). Body integers are counts and sizes (INTEGER columns); the
# parameters' go up to event ids (BIGINT). Floats that are no JSON go only into bodies.
BEYOND_INT64 = (2**63, -(2**63) - 1, 2**64, 10**30)
BEYOND_INT32 = (2**31, *BEYOND_INT64)
NUL_STRINGS = ("\x00", "a\x00b")
NOT_JSON = (float("nan"), float("inf"), float("-inf"))
# Fuzzing only: the examples and coverage phases do not go through the hook, so their cases
# (three in five calls) reached the test only to be passed by.
hostile = schemathesis.openapi.from_path(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {"phases": {"examples": {"enabled": False}, "coverage": {"enabled": False}}}
    ),
)
Slot = tuple[Any, Any, tuple[Any, ...]]  # a container, a key in it, what may replace its value


def _slots(value: Any, numbers: tuple[Any, ...], keys: set[str] | None = None) -> list[Slot]:
    """Every leaf of a generated value that can turn hostile (of `keys` only, when given:
    the parameters the operation declares, not extra ones it ignores)."""
    found: list[Slot] = []
    items = value.items() if isinstance(value, dict) else enumerate(value or ())
    for key, item in list(items):
        if isinstance(item, bool) or item is None or (keys is not None and key not in keys):
            continue
        if isinstance(item, int | float):
            found.append((value, key, numbers))
        elif isinstance(item, str):
            found.append((value, key, NUL_STRINGS))
        elif isinstance(item, dict | list):
            found.extend(_slots(item, numbers))
    return found


def _poisoned(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_poisoned(k) or _poisoned(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_poisoned(v) for v in value)
    if isinstance(value, str):
        return "\x00" in value or value in {str(n) for n in BEYOND_INT64}
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and value in BEYOND_INT32


@hostile.hook
def flatmap_case(_: schemathesis.HookContext, case: schemathesis.Case[Any]) -> Any:
    op = case.operation
    slots = _slots(case.path_parameters, BEYOND_INT64, {p.name for p in op.path_parameters})
    slots += _slots(case.query, BEYOND_INT64, {p.name for p in op.query})
    if isinstance(case.body, dict | list):
        slots += _slots(case.body, BEYOND_INT32 + NOT_JSON)
    if op.path == "/v1/events":  # an integer header: the position to resume after
        case.headers["Last-Event-ID"] = "0"
        slots.append((case.headers, "Last-Event-ID", tuple(str(n) for n in BEYOND_INT64)))
    if not slots:
        return st.just(case)  # nothing to poison: the test passes it by

    def poisoned(choice: tuple[int, int]) -> schemathesis.Case[Any]:
        container, key, values = slots[choice[0]]
        container[key] = values[choice[1] % len(values)]
        return case

    return st.tuples(st.integers(0, len(slots) - 1), st.integers(0, 99)).map(poisoned)


@pytest.fixture(scope="module")
def target(controller: Controller) -> tuple[str, str, str]:
    """Like `fuzzed`, in a project of its own: hostile cases that name a project name this one,
    so that they reach the store rather than stop at a 404."""
    project = new_project(controller, "hostile")
    with controller.client(None) as admin:
        admin.projects.set_quota(project, machines=4, vcpus=4, memory_mib=2048, disk_mib=4096)
    return controller.url, controller.token, project


@hostile.exclude(path_regex="^/agent/").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_hostile_values_are_refused_not_crashes(
    case: schemathesis.Case[Any], target: tuple[str, str, str]
) -> None:
    url, token, project = target
    declared = {p.name for p in case.operation.query}  # what the hook poisons, and is sent
    query = {k: v for k, v in (case.query or {}).items() if k in declared}
    parts = (case.path_parameters, query, case.headers, case.body)
    if not any(_poisoned(part) for part in parts):
        return  # an operation with nothing to poison (the hook passes it by)
    path = case.path_parameters or {}
    if "name" in path and not _poisoned(path["name"]) and case.method.upper() != "DELETE":
        path["name"] = project
    if case.query is not None:
        case.query.setdefault("project", project)
    kwargs = case.as_transport_kwargs(base_url=url, headers={"Authorization": f"Bearer {token}"})
    if "json" in kwargs:  # sent as Python writes it: NaN and Infinity included
        kwargs["content"] = json.dumps(kwargs.pop("json")).encode()
        kwargs["headers"]["Content-Type"] = "application/json"
    kwargs.pop("cookies", None)
    kwargs["url"] = kwargs["url"].replace("\x00", "%00")  # httpx refuses a raw one
    try:
        with httpx.stream(  # an event stream that was accepted would never end
            kwargs.pop("method"), kwargs.pop("url"), timeout=10, **kwargs
        ) as r:
            status, body = r.status_code, r.read() if r.status_code != 200 else b""
    except httpx.ReadTimeout:
        status, body = 200, b"(an accepted stream)"
    assert 400 <= status < 500, f"{case.method} {case.path} {parts!r}\n-> {status} {body[:300]!r}"
