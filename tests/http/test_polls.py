"""A long poll ends with its client: its work is cancelled once the client has gone, and its
answer is given when it comes first."""

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from hutch.http.polls import unless_gone
from hutch.http.problems import BodyTooLarge


def _request(gone_after: float) -> Request:
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.sleep(gone_after)
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "GET", "headers": []}, receive)


async def test_the_work_is_cancelled_when_the_client_goes() -> None:
    cancelled = asyncio.Event()

    async def poll() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    assert await asyncio.wait_for(unless_gone(_request(0.05), poll()), 5) is None
    assert cancelled.is_set()


async def test_an_answer_that_comes_first_is_given() -> None:
    async def poll() -> str:
        await asyncio.sleep(0.01)
        return "changed"

    assert await unless_gone(_request(3600), poll()) == "changed"


async def test_a_request_that_cannot_be_read_is_refused_as_such() -> None:
    async def receive() -> Message:
        raise BodyTooLarge(10)

    async def poll() -> str:
        await asyncio.sleep(3600)
        return "late"

    request = Request({"type": "http", "method": "GET", "headers": []}, receive)
    with pytest.raises(BodyTooLarge):
        await asyncio.wait_for(unless_gone(request, poll()), 5)
