"""Refusals as pages, and what every page says about itself (hutch/web/render.py)."""

from tests.helpers.api import Api
from tests.helpers.web import Visitor


async def test_refusals_under_ui_are_pages_and_the_apis_stay_problems(api: Api) -> None:
    v = Visitor(api)
    await v.sign_in(await api.token("alpha", "member"))
    for method, path, status in [
        ("GET", "/ui/nowhere", 404),
        ("DELETE", "/ui/machines", 405),
        ("GET", "/ui/machines/m-nope", 404),
    ]:
        r = await v.http.request(method, path)
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"].startswith("text/html"), path
        assert 'role="alert"' in r.text and "Traceback" not in r.text, path
    r = await v.get("/ui/machines/m-nope", headers={"HX-Request": "true"})
    assert r.status_code == 404 and r.text.startswith('<div role="alert"')  # the alert alone
    r = await api.call("GET", "/v1/nowhere")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    await v.close()


async def test_pages_are_never_framed_or_cached(api: Api) -> None:
    v = Visitor(api)
    # A page, a redirect, and a page no route answered (Starlette's own 404).
    for r in [await v.get("/ui/login"), await v.get("/ui/machines"), await v.get("/ui/nowhere")]:
        assert r.headers["x-frame-options"] == "DENY"
        csp = dict(d.split(" ", 1) for d in r.headers["content-security-policy"].split("; "))
        assert csp["frame-ancestors"] == "'none'"
        # Markup that got past escaping runs no script: only the dashboard's own files do.
        assert csp["script-src"] == "'self'" and csp["object-src"] == "'none'"
        assert r.headers["cache-control"] == "no-store"
    await v.sign_in(await api.token("alpha", "reader"))
    r = await v.get("/ui/machines")
    assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY"
    assert r.headers["server-timing"].startswith("app;dur=")
    await v.close()
