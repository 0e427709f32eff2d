"""The one map from hutch's errors to HTTP: problem+json with a detail that says what to do."""

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Scope

from hutch.model import errors
from hutch.wire.common import Problem

log = logging.getLogger("hutch.http")


def _described(status: int) -> str:
    """What a status means, from the titles of the classes answered with it."""
    return ", or ".join(c.title for c in errors.CLASSES if c.status == status)


# What every route may answer besides its success: documented in the OpenAPI description so
# clients (and schemathesis) know the shape of errors.
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {
        "model": Problem,
        "description": title,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    for code, title in sorted(
        {
            **{cls.status: _described(cls.status) for cls in errors.CLASSES},
            413: "Body too large",
            422: "Body or parameters do not match the schema",
        }.items()
    )
}


def problem(
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    param: str = "",
) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, param=param).model_dump()
    if not param:  # said only when there is one
        del body["param"]
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


def status_of(error: errors.HutchError) -> tuple[int, str]:
    """The status and title of the error's class (`model/errors.py`)."""
    return type(error).status, type(error).title


def ws_error(error: errors.HutchError) -> str:
    """A refusal as a WebSocket's last text message: the problem fields, typed "error"."""
    status, title = status_of(error)
    fields = {"type": "error", "status": status, "title": title, "detail": error.message}
    return json.dumps(fields | ({"param": error.param} if error.param else {}))


class BodyTooLarge(HTTPException):
    """413: raised while a body is read, so that FastAPI, which turns other errors of body
    parsing into a 400, passes it on."""

    title = "Body too large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request bodies are limited to {limit} bytes")


class BodyLate(HTTPException):
    """408: a request's body did not arrive in time (raised like BodyTooLarge); the
    connection is closed after the answer."""

    title = "Request timeout"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, f"the request's body did not arrive within {seconds:g} s",
            headers={"Connection": "close"},
        )  # fmt: skip


def _allowed(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route serves at this path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": ""})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _where(error: Any) -> str:
    """The field a validation error is about ("quota.vcpus"), or where the body broke."""
    loc = error["loc"]
    if error.get("type") == "json_invalid":
        return f"{loc[0]} (at character {loc[1]})" if len(loc) > 1 else str(loc[0])
    return ".".join(str(p) for p in loc[1:]) or str(loc[0])


def install(app: FastAPI) -> None:
    @app.exception_handler(errors.HutchError)
    async def hutch_error(_: Request, e: errors.HutchError) -> JSONResponse:
        status, title = status_of(e)
        return problem(status, title, e.message, param=e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        details = "; ".join(_where(err) + f": {err['msg']}" for err in e.errors())
        return problem(422, "Does not match the schema", details)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        headers = dict(e.headers or {})
        if e.status_code == 405:  # Starlette names the methods of the first route that matched
            headers["Allow"] = ", ".join(_allowed(app, request.scope))
        title = e.title if isinstance(e, BodyTooLarge | BodyLate) else str(e.detail)
        return problem(e.status_code, title, str(e.detail), headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "the server failed; its log says why")
