"""For the dashboard's page tests: a visitor signed in with a new token of a project and role."""

from tests.helpers.api import Api
from tests.helpers.web import Visitor


async def signed_in(api: Api, project: str | None, role: str = "member") -> Visitor:
    """A visitor with a new token (`project` None: the fixture's system token)."""
    v = Visitor(api)
    token = api.admin if project is None else await api.token(project, role)
    r = await v.sign_in(token)
    assert r.status_code == 303, r.text
    return v
