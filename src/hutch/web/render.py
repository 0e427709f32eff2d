"""Pages as HTML: the templates, the route class every page router uses, and errors as pages.

A route of a `pages()` router answers refusals as HTML with their status and message (an htmx
request gets only the `<div role="alert">`), sends a visitor without a session to /ui/login,
and says its own time in a `Server-Timing` header.
"""

import shlex
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from hutch.model.errors import HutchError, Invalid, Unauthenticated
from hutch.services.policy import Action
from hutch.web.visitor import COOKIE, Visitor

HERE = Path(__file__).parent
TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # names, commands and log lines are the tenants'
    undefined=jinja2.StrictUndefined,  # a misspelt variable fails the test, not the page
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.globals["Action"] = Action  # `v.may(Action.MACHINE_WRITE)` in templates
TEMPLATES.filters["isotime"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
TEMPLATES.filters["isodate"] = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
# A command as the run form takes it back: shell words, so `sh -c 'a; b'` does not read as
# `sh -c a; b`.
TEMPLATES.filters["shell"] = shlex.join


# On every page: never framed by another site (its buttons act), never cached (its forms carry
# the session's CSRF value), no guessing of types, no full URLs sent elsewhere. Scripts only from
# our own files (the pages have no inline script), so markup a tenant smuggled past escaping
# still runs nothing; styles may be inline (the printable invoice's, xterm.js's own).
CSP = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:", "object-src 'none'", "base-uri 'none'", "form-action 'self'",
    "frame-ancestors 'none'",
])  # fmt: skip
HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def html(template: str, **context: Any) -> str:
    """A template (or fragment) rendered to a string."""
    return TEMPLATES.get_template(template).render(**context)


def page(
    request: Request,
    v: Visitor | None,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A whole page; templates extend base.html, which reads `request` and `v`."""
    body = html(template, request=request, v=v, **context)
    return HTMLResponse(body, status_code=status, headers=headers)


def see_other(url: str) -> RedirectResponse:
    """After a POST: the page to show (303, so the browser GETs it)."""
    return RedirectResponse(url, status_code=303)


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def error(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    """A refusal as a page (or, for htmx, as the alert alone)."""
    if is_htmx(request):
        return HTMLResponse(html("alert.html", message=message), status_code=status)
    v = getattr(request.state, "visitor", None)
    return page(request, v, "error.html", status, title=title, message=message)


def local_next(target: str | None) -> str | None:
    """`target` if it is a dashboard path of this site (where to go after signing in)."""
    if not target or any(ord(c) < 0x20 or c == "\\" for c in target):
        return None
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or not (parts.path == "/ui" or parts.path.startswith("/ui/")):
        return None
    return target


def sign_in(request: Request) -> Response:
    """Where a visitor without a session goes: the sign-in page, then back here."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    back = here if request.method == "GET" and local_next(here) else "/ui/machines"
    url = "/ui/login?" + urllib.parse.urlencode({"next": back})
    response: Response
    if is_htmx(request):
        response = Response(status_code=401, headers={"HX-Redirect": url})
    else:
        response = see_other(url)
    response.delete_cookie(COOKIE, path="/ui")
    return response


def _invalid_input(e: RequestValidationError) -> str:
    said = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"][1:]) or str(err["loc"][0])
        said.append(f"{where}: {err['msg']}")
    return "; ".join(said)


class PageRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except Unauthenticated:
                response = sign_in(request)
            except HutchError as e:
                response = error(request, type(e).status, type(e).title, e.message)
            except RequestValidationError as e:
                response = error(request, Invalid.status, Invalid.title, _invalid_input(e))
            took = (time.perf_counter() - start) * 1000
            response.headers["Server-Timing"] = f"app;dur={took:.1f}"
            response.headers.update(HEADERS)
            return response

        return handle


def pages() -> APIRouter:
    """A router for a page group (add it to `hutch.web.PAGES`)."""
    return APIRouter(route_class=PageRoute, include_in_schema=False)


def install(app: FastAPI) -> None:
    """Starlette's own refusals under /ui (no such page, wrong method) as pages too."""
    api_handler = app.exception_handlers[HTTPException]

    async def http_error(request: Request, e: Exception) -> Response:
        if request.url.path == "/ui" or request.url.path.startswith("/ui/"):
            assert isinstance(e, HTTPException)
            titles = {404: "Not found", 405: "Method not allowed"}
            page = error(request, e.status_code, titles.get(e.status_code, "Error"), e.detail)
            page.headers.update(HEADERS)  # a page as any other (no PageRoute answered it)
            return page
        response: Response = await api_handler(request, e)  # type: ignore[misc]
        return response

    app.add_exception_handler(HTTPException, http_error)
