"""Sessions, sign-in and sign-out, CSRF, and who sees what (hutch/web/visitor.py)."""

from tests.helpers.api import Api
from tests.helpers.web import Visitor, csrf_of


async def test_sign_in_then_out(api: Api) -> None:
    token = await api.token("alpha", "member")
    v = Visitor(api)
    r = await v.get("/ui/machines")
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fmachines"
    r = await v.sign_in(token)
    assert r.status_code == 303 and r.headers["location"] == "/ui/machines"
    cookie = r.headers["set-cookie"]
    assert "hutch_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/ui" in cookie
    page = await v.get("/ui/machines")
    assert page.status_code == 200 and '<table id="machines">' in page.text
    assert "Server-Timing" in page.headers
    r = await v.post("/ui/logout")
    assert r.status_code == 303
    assert (await v.get("/ui/machines")).status_code == 303
    await v.close()


async def test_a_wrong_token_or_a_forged_sign_in_is_refused(api: Api) -> None:
    v = Visitor(api)
    r = await v.sign_in("not-a-token")
    assert r.status_code == 401 and 'role="alert"' in r.text and "unknown token" in r.text
    token = await api.token("alpha", "member")
    form = await v.get("/ui/login")
    r = await v.http.post("/ui/login", data={"token": token, "csrf": "forged"})
    assert r.status_code == 403 and "sign-in form" in r.text
    r = await v.http.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text)})
    assert r.status_code == 303
    await v.close()


async def test_a_post_without_the_csrf_value_is_refused(api: Api) -> None:
    v = Visitor(api)
    await v.sign_in(await api.token("alpha", "member"))
    r = await v.post("/ui/logout", data={"csrf": "wrong"})
    assert r.status_code == 403 and 'role="alert"' in r.text
    assert (await v.get("/ui/machines")).status_code == 200  # still signed in
    assert (await v.post("/ui/logout")).status_code == 303
    await v.close()
