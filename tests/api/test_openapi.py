"""The committed API description (docs/openapi.json) is the app's, and the app keeps to it:
schemathesis generates requests from the committed document against a real controller."""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from hutch import config
from hutch.api.app import openapi_document
from tests.api.conftest import JOIN

ROOT = Path(__file__).parents[2]
DOCUMENT = ROOT / "docs" / "openapi.json"


def test_the_committed_document_is_the_apps() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        current = openapi_document(config.load(state_dir=Path(tmp)))
    committed = json.loads(DOCUMENT.read_text())
    assert current == committed, (
        "docs/openapi.json is out of date: regenerate it with `make openapi`"
    )


@pytest.fixture(scope="module")
def controller() -> Iterator[tuple[str, str]]:
    """A controller process with a simulated node; (url, system token)."""
    state = Path(tempfile.mkdtemp(prefix="hs", dir="/tmp"))
    port = _free_port()
    env = {**os.environ, "HUTCH_STATE_DIR": str(state), "HUTCH_JOIN_SECRET": JOIN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hutch", "controller", "--listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200 and (state / "admin-token").exists():
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    node = {"name": "sim-1", "address": "http://127.0.0.1:9", "runtimes": ["container"],
            "accel": "none", "cpus": 8, "memory_mib": 1 << 16, "disk_mib": 1 << 16}  # fmt: skip
    httpx.post(f"{url}/agent/v1/nodes", json=node, headers={"Authorization": f"Bearer {JOIN}"})
    yield url, (state / "admin-token").read_text().strip()
    proc.terminate()
    proc.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


schema = schemathesis.openapi.from_path(DOCUMENT)


@schema.exclude(path="/v1/events").exclude(path_regex="^/agent/").parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_keeps_to_its_description(
    case: schemathesis.Case, controller: tuple[str, str]
) -> None:
    url, token = controller
    if case.query is not None:
        case.query.setdefault("project", "default")
    case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=20)
