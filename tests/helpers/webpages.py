"""For the dashboard's page tests: a visitor signed in with a new token of a project and role,
and the message a refusal's page shows."""

import html
import re

from tests.helpers.api import Api
from tests.helpers.web import Visitor


async def signed_in(api: Api, project: str | None, role: str = "member") -> Visitor:
    """A visitor with a new token (`project` None: the fixture's system token)."""
    v = Visitor(api)
    token = api.admin if project is None else await api.token(project, role)
    r = await v.sign_in(token)
    assert r.status_code == 303, r.text
    return v


def alert(page: str) -> str:
    """The text of the page's first error alert (`<div role="alert">`), unescaped."""
    found = re.search(r'<div role="alert" class="alert">(.*?)</div>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))
