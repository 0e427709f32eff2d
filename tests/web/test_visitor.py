"""Sessions, sign-in and sign-out, CSRF, and who sees what (hutch/web/visitor.py)."""

from hutch.services.tenancy import SESSIONS_PER_TOKEN
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


async def test_signing_in_again_ends_the_browsers_previous_session(api: Api) -> None:
    v = Visitor(api)
    await v.sign_in(await api.token("alpha", "member"))
    before = v.http.cookies["hutch_session"]
    copy = {"Cookie": f"hutch_session={before}"}  # whoever else holds that cookie
    assert (await api.http.get("/ui/machines", headers=copy)).status_code == 200
    assert (await v.sign_in(await api.token("alpha", "admin"))).status_code == 303
    assert v.http.cookies["hutch_session"] != before  # a new secret, not the old one kept
    assert (await v.get("/ui/machines")).status_code == 200
    assert (await api.http.get("/ui/machines", headers=copy)).status_code == 303  # it ended
    await v.close()


async def test_a_wrong_token_or_a_forged_sign_in_is_refused(api: Api) -> None:
    v = Visitor(api)
    r = await v.sign_in("not-a-token")
    assert r.status_code == 401 and 'role="alert"' in r.text and "unknown token" in r.text
    token = await api.token("alpha", "member")
    form = await v.get("/ui/login")
    assert "hutch token create --project PROJECT" in form.text  # the CLI's command, as it is
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


async def test_revoking_the_token_ends_its_sessions(api: Api) -> None:
    r = await api.call("POST", "/v1/projects/alpha/tokens", json={"role": "member"})
    token, token_id = r.json()["secret"], r.json()["id"]
    v, other = Visitor(api), Visitor(api)
    await v.sign_in(token)
    await other.sign_in(await api.token("alpha", "member"))
    assert (await v.get("/ui/machines")).status_code == 200
    r = await api.call("DELETE", f"/v1/projects/alpha/tokens/{token_id}")
    assert r.status_code == 204, r.text
    r = await v.get("/ui/machines", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["HX-Redirect"].startswith("/ui/login")
    assert (await other.get("/ui/machines")).status_code == 200  # another token's goes on
    assert (await v.sign_in(token)).status_code == 401
    for each in (v, other):
        await each.close()


async def test_cookies_are_secure_over_https_and_next_stays_here(api: Api) -> None:
    v = Visitor(api, base_url="https://hutch")
    form = await v.get("/ui/login", params={"next": "https://evil.example/ui/x"})
    assert "Secure" in form.headers["set-cookie"]
    assert 'name="next" value=""' in form.text
    token = await api.token("alpha", "reader")
    for target, went in [
        ("/ui/machines?q=web", "/ui/machines?q=web"),
        ("//evil.example/ui", "/ui/machines"),
        ("/v1/machines", "/ui/machines"),
        ("/ui/\r\nSet-Cookie: x=1", "/ui/machines"),
    ]:
        form = await v.get("/ui/login")  # its cookie went with the last sign-in
        r = await v.http.post(
            "/ui/login", data={"token": token, "csrf": csrf_of(form.text), "next": target}
        )
        assert r.status_code == 303 and r.headers["location"] == went, target
        assert "Secure" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
    await v.close()


async def test_projects_a_visitor_acts_in(api: Api) -> None:
    member = Visitor(api)
    await member.sign_in(await api.token("alpha", "member"))
    assert "Project <strong>alpha</strong>" in (await member.get("/ui/machines")).text
    r = await member.get("/ui/machines", params={"project": "beta"})
    assert r.status_code == 404 and "no project &#39;beta&#39;" in r.text  # as if not there
    system = Visitor(api)
    await system.sign_in(api.admin)
    r = await system.get("/ui/machines", params={"project": "beta"})
    assert r.status_code == 200 and "<option selected>beta</option>" in r.text
    # Kept in the session: the next page acts in beta too.
    assert "<option selected>beta</option>" in (await system.get("/ui/machines")).text
    r = await system.get("/ui/machines", params={"project": "nope"})
    assert r.status_code == 404 and 'role="alert"' in r.text
    for each in (member, system):
        await each.close()


async def test_a_nul_in_a_form_is_refused_as_the_api_refuses_it(api_both: Api) -> None:
    # PostgreSQL fails a query whose text holds a NUL: it was a 500 there (a token's label,
    # a bulk action's id).
    v = Visitor(api_both)
    await v.sign_in(await api_both.token("alpha", "admin"))
    for path, form in [
        ("/ui/projects/alpha/tokens", {"role": "reader", "label": "ci\0"}),
        ("/ui/machines/bulk", {"action": "stop", "id": "m-\0"}),
    ]:
        r = await v.post(path, form)
        assert r.status_code == 400 and "NUL characters" in r.text, (path, r.text)
    r = await v.post("/ui/projects/alpha/tokens", {"role": "reader", "label": "ci"})
    assert r.status_code == 200 and "<td>ci</td>" in (await v.get("/ui/projects")).text
    await v.close()


async def test_a_tokens_sign_ins_are_bounded_the_oldest_ending_first(api_both: Api) -> None:
    # Every sign-in was a row of the store, kept 12 hours: a reader could grow it without end.
    token = await api_both.token("alpha", "reader")
    first = Visitor(api_both)
    await first.sign_in(token)
    others = []
    for _ in range(SESSIONS_PER_TOKEN - 1):
        others.append(Visitor(api_both))
        assert (await others[-1].sign_in(token)).status_code == 303
    assert (await first.get("/ui/machines")).status_code == 200  # the limit: all still on
    last = Visitor(api_both)
    await last.sign_in(token)
    assert (await first.get("/ui/machines")).status_code == 303  # the oldest went
    for v in (others[0], last):
        assert (await v.get("/ui/machines")).status_code == 200
    for v in (first, *others, last):
        await v.close()
