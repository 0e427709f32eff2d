"""The shared core's pure parts: plans driven by hand, decoders fed by hand."""

import io
import json
import tarfile
from pathlib import Path

import pytest

from hutch.client import _core as core
from hutch.client._calls import listing
from hutch.client.errors import (
    ApiError,
    Invalid,
    NoCapacity,
    QuotaExceeded,
    Unavailable,
    Unreachable,
    WaitTimeout,
    error_for,
)
from hutch.wire.common import Page
from hutch.wire.machines import MachineView

MACHINE = {
    "id": "m-1",
    "name": "job",
    "project": "p",
    "image": "busybox",
    "cpus": 1,
    "memory_mib": 128,
    "disk_mib": 0,
    "runtime": "container",
    "restart": "no",
    "state": "running",
    "desired": "running",
    "created_at": 1.0,
}


def answer(reached: bool, state: str = "running", *, final: bool = False) -> bytes:
    machine = {**MACHINE, "state": state}
    return json.dumps({"machine": machine, "reached": reached, "final": final}).encode()


def test_wait_loops_over_the_servers_cap_until_its_own_timeout() -> None:
    now = [0.0]
    plan = core.wait("job", "finished", 700.0, clock=lambda: now[0])
    holds = []
    call = next(plan)
    with pytest.raises(WaitTimeout, match="job is running, not finished, after 700 s"):
        while True:
            holds.append(call.hold)
            now[0] += call.hold or 0
            call = plan.send(answer(False))
    assert holds == [300.0, 300.0, 100.0]
    assert dict(call.params)["timeout"] == "100.000"


def test_wait_without_timeout_returns_when_reached() -> None:
    plan = core.wait("job", "exited", None)
    assert next(plan).hold == core.MAX_WAIT
    plan.send(answer(False))
    with pytest.raises(StopIteration) as done:
        plan.send(answer(True, "exited"))
    assert done.value.value.state == "exited"


def test_started_is_running_or_anything_after_it() -> None:
    plan = core.wait("job", "started", None)
    call = next(plan)
    assert dict(call.params)["state"] == "running" and call.hold == core.MAX_WAIT
    plan.send(answer(False, "starting"))
    with pytest.raises(StopIteration) as done:
        plan.send(answer(False, "exited", final=True))  # ran and ended between two looks
    assert done.value.value.state == "exited"


def test_a_state_it_will_not_reach_is_unreachable() -> None:
    plan = core.wait("job", "running", None)
    next(plan)
    with pytest.raises(Unreachable, match="job is failed and will not be running"):
        plan.send(answer(False, "failed", final=True))


def test_pages_carry_the_cursor() -> None:
    call = listing("running", {"a": "b"}, False, 2)
    plan = core.page(call, Page[MachineView])
    assert next(plan) == call
    with pytest.raises(StopIteration) as done:
        plan.send(json.dumps({"items": [MACHINE], "next": "c1"}).encode())
    items, after = done.value.value
    assert [m.id for m in items] == ["m-1"]
    assert after.params == (
        ("state", "running"),
        ("label", "a=b"),
        ("limit", "2"),
        ("cursor", "c1"),
    )


def test_server_sent_events() -> None:
    decoder = core.EventDecoder()
    event = {"id": 7, "kind": "machine.state", "object": "m-1", "state": "exited", "time": 2.0}
    lines = [": keepalive", "", "id: 7", "event: machine.state", f"data: {json.dumps(event)}"]
    assert [decoder.feed(line) for line in lines] == [None] * 5
    decoded = decoder.feed("")
    assert decoded is not None and (decoded.id, decoded.state) == (7, "exited")


def test_a_pull_reports_progress_then_the_image() -> None:
    seen: list[int] = []
    feed = core.PullFeed(lambda e: seen.append(e.done))
    image = {
        "id": "sha256:ab",
        "names": ["x"],
        "size": 3,
        "created": 1.0,
        "layers": 1,
        "public": False,
    }
    for line in [
        json.dumps({"layer": "sha256:l", "status": "downloading", "done": 1, "total": 3}),
        "",
        json.dumps({"image": image}),
    ]:
        feed.feed(line)
    assert seen == [1] and feed.result().id == "sha256:ab"
    with pytest.raises(Unavailable, match="without an image"):
        core.PullFeed(None).result()


def test_problems_map_to_error_classes() -> None:
    assert type(error_for(403, "Quota exceeded", "d")) is QuotaExceeded
    assert type(error_for(503, "No capacity", "d")) is NoCapacity
    assert type(error_for(503, "Unavailable", "d")) is Unavailable
    assert type(error_for(413, "Body too large", "d")) is Invalid
    assert type(error_for(500, "Internal error", "d")) is Unavailable
    assert type(error_for(418, "Teapot", "")) is ApiError
    assert error_for(418, "Teapot", "").message == "Teapot"


def test_a_layout_directory_is_sent_as_an_oci_archive(tmp_path: Path) -> None:
    (tmp_path / "blobs" / "sha256").mkdir(parents=True)
    (tmp_path / "blobs" / "sha256" / "abc").write_bytes(b"blob")
    (tmp_path / "index.json").write_text("{}")
    with core.archive(tmp_path) as chunks:
        data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["blobs", "blobs/sha256", "blobs/sha256/abc", "index.json"]
    with core.archive(b"raw") as chunks:
        assert list(chunks) == [b"raw"]
    with pytest.raises(Invalid, match="does not exist"), core.archive(tmp_path / "nope.tar"):
        pass
