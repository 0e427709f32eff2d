"""Who is looking at the dashboard: the signed-in session, as a `Visitor`.

A page takes one of two dependencies and calls the services with `v.principal` and
`v.project`, exactly as the API's routes do, so the services' policy refuses the same things:

    @router.get("/ui/things")
    async def things(request: Request, v: Visiting) -> HTMLResponse: ...   # reading

    @router.post("/ui/things")
    async def make(request: Request, v: Acting, name: Annotated[str, Form()]) -> Response: ...

- `Visiting`: a signed-in visitor (else GETs go to /ui/login?next=..., htmx requests get a 401
  with `HX-Redirect`), acting in `v.project` (a system token picks it with `?project=NAME`,
  kept in the session; a project token's is its own, naming another is a 404).
- `Acting`: the same, for anything that changes something: the request must carry the
  session's CSRF value (form field `csrf`, or header `X-CSRF-Token` as htmx sends it), else 403.
- `v.may(Action.X)`: whether to show a form at all (the services' own policy, not a copy).
- WebSockets: `await resolve(ws, project)`, then `check_csrf(v, sent)`.
"""

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from hutch.controller import Controller
from hutch.model.errors import Forbidden, Invalid, NotFound
from hutch.model.tenancy import Principal, Project
from hutch.services.policy import Action, Policy

COOKIE = "hutch_session"  # holds the session's secret; the store keeps only its sha256
LOGIN_COOKIE = "hutch_login"  # the sign-in form's CSRF value, before there is a session
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Visitor:
    """A signed-in visitor, in the project the page acts in."""

    principal: Principal
    project: Project
    csrf: str  # every form carries it as field `csrf`
    projects: tuple[str, ...]  # what a system token may pick from (empty for project tokens)
    policy: Policy

    def may(self, action: Action) -> bool:
        return self.policy.allows(self.principal, action, self.project.id)

    @property
    def system(self) -> bool:
        return self.principal.system


def controller(conn: HTTPConnection) -> Controller:
    ctl: Controller = conn.app.state.controller
    return ctl


async def resolve(conn: HTTPConnection, project: str | None) -> Visitor:
    """The visitor of a request or WebSocket, from its session cookie (Unauthenticated if
    none or ended), acting in `project` (None: the session's)."""
    ctl = controller(conn)
    session, principal = await ctl.tenancy.session(conn.cookies.get(COOKIE))
    policy = ctl.tenancy.policy
    if not principal.system:
        chosen = await ctl.tenancy.project_for(principal, project)
        v = Visitor(principal, chosen, session.csrf, (), policy)
    else:
        every = sorted(await ctl.tenancy.projects(principal), key=lambda p: p.name)
        if project is not None:
            found = [p for p in every if p.name == project]
            if not found:
                raise NotFound(f"no project {project!r}")
            chosen = found[0]
            if chosen.id != session.project_id:
                session = await ctl.tenancy.choose_project(session, chosen.id)
        else:
            kept = [p for p in every if p.id == session.project_id]
            default = [p for p in every if p.name == conn.app.state.web_settings.project]
            if not (kept or default or every):
                raise NotFound("there are no projects yet: create one (hutch project create)")
            chosen = (kept or default or every)[0]
        v = Visitor(principal, chosen, session.csrf, tuple(p.name for p in every), policy)
    conn.state.visitor = v  # for the error page's header
    return v


async def visitor(request: Request, project: str | None = None) -> Visitor:
    return await resolve(request, project)


def check_csrf(v: Visitor, sent: object) -> None:
    """Forbidden unless `sent` is the session's CSRF value (compared in constant time)."""
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), v.csrf.encode()):
        raise Forbidden("this form's security token is missing or out of date: "
                        "reload the page and try again")  # fmt: skip


Visiting = Annotated[Visitor, Depends(visitor)]


async def acting(request: Request, v: Visiting) -> Visitor:
    form = await request.form()  # parsed once: Form() parameters reuse it
    sent: object = request.headers.get("x-csrf-token")
    if sent is None:
        sent = form.get("csrf")
    check_csrf(v, sent)
    # As the API refuses in bodies (wire.common.Request) and URLs (http.limits.NoNul): no text
    # of hutch's holds a NUL, and PostgreSQL fails a query that carries one (a 500).
    for name, value in form.multi_items():
        if isinstance(value, str) and "\0" in value:
            raise Invalid(f"form field {name!r}: NUL characters (\\x00) are not allowed")
    return v


Acting = Annotated[Visitor, Depends(acting)]
