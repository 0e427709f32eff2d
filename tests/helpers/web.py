"""A visitor of the dashboard over httpx (no browser): signs in through the form, keeps its
cookies, and finds the CSRF value forms carry."""

import re
from collections.abc import Mapping

import httpx

from tests.helpers.api import Api

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: str) -> str:
    found = _CSRF.search(page)
    assert found, "no CSRF field in the page"
    return found.group(1)


class Visitor:
    def __init__(self, api: Api, base_url: str = "http://hutch", served: bool = False) -> None:
        """`served`: `base_url` is a real server (tests.helpers.api.served), for streams."""
        transport = None if served else api.http._transport
        self.http = httpx.AsyncClient(transport=transport, base_url=base_url)
        self.csrf = ""

    async def sign_in(self, token: str) -> httpx.Response:
        form = await self.http.get("/ui/login")
        r = await self.http.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text)})
        if r.status_code == 303:
            self.csrf = csrf_of((await self.http.get(r.headers["location"])).text)
        return r

    async def get(self, path: str, **kwargs: object) -> httpx.Response:
        return await self.http.get(path, **kwargs)  # type: ignore[arg-type]

    async def post(self, path: str, data: Mapping[str, object] | None = None,
                   **kwargs: object) -> httpx.Response:  # fmt: skip
        """A form posted with the session's CSRF value (unless `data` names its own)."""
        return await self.http.post(path, data={"csrf": self.csrf, **(data or {})}, **kwargs)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.http.aclose()
