"""The committed API description (docs/openapi.json) is the app's, and the app keeps to it:
schemathesis generates requests from the committed document against a real `hutch up`."""

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
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
