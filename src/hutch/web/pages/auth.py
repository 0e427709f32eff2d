"""Signing in and out: /ui/login, /ui/logout, and /ui itself."""

import hmac
import secrets
from typing import Annotated

from fastapi import Form, Request, Response
from fastapi.responses import HTMLResponse

from hutch.model.errors import Forbidden, Unauthenticated
from hutch.web.render import local_next, page, pages, see_other
from hutch.web.visitor import COOKIE, LOGIN_COOKIE, SESSION_SECONDS, Acting, controller

router = pages()


def _cookie(request: Request, response: Response, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name, value, max_age=age, path="/ui", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


@router.get("/ui")
async def home() -> Response:
    return see_other("/ui/machines")


def _login_page(
    request: Request, next: str | None, status: int = 200, message: str = ""
) -> HTMLResponse:
    # Double submit: the form's value must match this cookie, which another site can neither
    # read nor set, so a sign-in posted from elsewhere (into the attacker's account) fails.
    csrf = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = page(request, None, "login.html", status, csrf=csrf, next=local_next(next) or "",
                    message=message)  # fmt: skip
    _cookie(request, response, LOGIN_COOKIE, csrf, 3600)
    return response


@router.get("/ui/login")
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _login_page(request, next)


@router.post("/ui/login")
async def login(
    request: Request,
    token: Annotated[str, Form(max_length=512)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
        raise Forbidden("this sign-in form is out of date or came from another site: "
                        "reload the sign-in page and try again")  # fmt: skip
    tenancy = controller(request).tenancy
    try:
        secret, _ = await tenancy.open_session(token.strip(), SESSION_SECONDS)
    except Unauthenticated as e:
        return _login_page(request, next, 401, f"Not signed in: {e.message}.")
    # The browser's previous session ends: its cookie is replaced, and whoever else holds it
    # (a shared computer, a stolen copy) must not keep it for its 12 hours.
    await tenancy.close_session(request.cookies.get(COOKIE))
    response = see_other(local_next(next) or "/ui/machines")
    _cookie(request, response, COOKIE, secret, SESSION_SECONDS)
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/ui/logout")
async def logout(request: Request, _: Acting) -> Response:
    await controller(request).tenancy.close_session(request.cookies.get(COOKIE))
    response = see_other("/ui/login")
    response.delete_cookie(COOKIE, path="/ui")
    return response
