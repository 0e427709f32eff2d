"""SDK tests run against a real `hutch up` (tests/controller.py), each in a project of its own."""

from collections.abc import AsyncIterator, Iterator

import pytest

from hutch.client import AsyncClient, Client
from tests.controller import Controller, controller, new_project

__all__ = ["controller"]  # the session fixture, for the tests here


@pytest.fixture
def project(controller: Controller) -> str:
    return new_project(controller)


@pytest.fixture
def client(controller: Controller, project: str) -> Iterator[Client]:
    with controller.client(project) as c:
        yield c


@pytest.fixture
async def aclient(controller: Controller, project: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(controller.url, controller.token, project=project) as c:
        yield c
