"""Refusals become hutch's error classes, with the status and the server's detail."""

import pytest

from hutch.client import (
    ApiError,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    NoCapacity,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from hutch.model import errors
from tests.controller import Controller, new_project

C = "container"


def test_another_projects_machine_does_not_exist(controller: Controller, client: Client) -> None:
    m = client.machines.create("busybox", runtime=C, start=False, name="secret")
    with controller.client(new_project(controller)) as other:
        for ref in (m.id, "secret"):
            with pytest.raises(NotFound) as e:
                other.machines.get(ref)
            assert e.value.status == 404 and isinstance(e.value, errors.NotFound)
        assert list(other.machines.list()) == []
    client.machines.delete(m)


def test_a_bad_token_is_401(controller: Controller) -> None:
    with (
        Client(controller.url, "not-a-token", project="default") as client,
        pytest.raises(Unauthenticated) as e,
    ):
        list(client.machines.list())
    assert e.value.status == 401 and e.value.detail == "unknown token"
    assert isinstance(e.value, errors.Unauthenticated)


def test_a_reader_cannot_write(controller: Controller, client: Client, project: str) -> None:
    with controller.client(None) as admin:
        reader = admin.projects.tokens.create(project, role="reader")
    with Client(controller.url, reader.secret) as ro:
        assert list(ro.machines.list()) == []
        with pytest.raises(Forbidden) as e:
            ro.machines.create("busybox", runtime=C)
        assert e.value.status == 403 and "member" in e.value.detail
        with pytest.raises(Forbidden):
            ro.projects.create("nope")  # system tokens only


def test_deleting_a_running_machine_needs_force(client: Client) -> None:
    m = client.machines.run("busybox", ["sleep", "600"], runtime=C)
    with pytest.raises(Conflict) as e:
        client.machines.delete(m)
    assert e.value.status == 409 and "force" in e.value.detail
    client.machines.delete(m, force=True)


def test_unknown_fields_are_422(client: Client, project: str) -> None:
    with pytest.raises(Invalid) as e:
        client.request(
            "POST",
            "/v1/machines",
            params={"project": project},
            json={"image": "busybox", "project": "other"},
        )
    assert e.value.status == 422 and "project" in e.value.detail
    assert isinstance(e.value, errors.Invalid)


def test_the_sdk_refuses_bad_requests_like_the_server(client: Client) -> None:
    with pytest.raises(Invalid) as e:
        client.machines.create("busybox", cpus=0)
    assert e.value.status == 422 and "cpus" in e.value.detail
    with pytest.raises(Invalid, match="list of arguments"):
        client.machines.exec("m", "echo hi")  # a string, not argv


def test_no_node_can_take_it(client: Client) -> None:
    with pytest.raises(NoCapacity) as e:
        client.machines.create("busybox", runtime=C, cpus=200)
    assert e.value.status == 503 and "vCPUs" in e.value.detail


def test_exec_refusals_come_as_errors(controller: Controller, client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.machines.exec("nothing-here", ["true"])
    assert (missing.value.status, missing.value.title) == (404, "Not found")
    m = client.machines.create("busybox", runtime=C, start=False)
    with pytest.raises(Conflict, match="never run"):
        client.machines.exec(m, ["true"])
    with Client(controller.url, "bad") as anonymous, pytest.raises(Unauthenticated):
        anonymous.machines.exec(m, ["true"])
    client.machines.delete(m)


def test_an_unreachable_controller_is_unavailable() -> None:
    with Client("http://127.0.0.1:9", "token", timeout=2) as client:
        with pytest.raises(Unavailable, match=r"controller http://127.0.0.1:9 cannot be reached"):
            client.machines.get("m")
        with pytest.raises(Unavailable, match="cannot be reached"):
            client.machines.exec("m", ["true"])


def test_every_error_is_an_api_error_with_a_status(client: Client) -> None:
    with pytest.raises(ApiError) as e:
        client.machines.get("nope")
    assert (e.value.status, e.value.title) == (404, "Not found")
    assert e.value.message == e.value.detail == f"no machine 'nope' in project {client.project}"
