"""The dashboard in a real browser (headless Debian Chromium through selenium), against a real
`hutch up` running micro-VMs: what a person does with it, and what a reader, another project
and a forger are refused. Two guests in all: `world`'s machine, and the one a test runs from the
page. The run writes screenshots of the main pages to build/screenshots/ (`make screenshots`).
"""

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from hutch.wire.machines import MachineView
from tests.controller import Controller, new_project
from tests.helpers.browser import Browser

TICKS = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done"
STOP = "button[name=action][value=stop]"
REMOVE = "button[name=action][value=remove]"
ACTIONS = "button[name=action]"


@dataclass(frozen=True)
class World:
    """Project A with a running machine and a member and a reader; project B with a member."""

    project: str
    member: str  # tokens' secrets
    reader: str
    machine: MachineView
    other_member: str  # project B's


def token(ctl: Controller, project: str, role: str) -> str:
    with ctl.client(None) as admin:
        return admin.projects.tokens.create(project, role=role, name=f"web-{role}").secret


@pytest.fixture(scope="module")
def world(dashboard: Controller) -> Iterator[World]:
    a, b = new_project(dashboard, "web-a"), new_project(dashboard, "web-b")
    with dashboard.client(a) as client:
        m = client.machines.run("busybox", ["sh", "-c", TICKS], name="ticker", hold_output=False)
        try:
            yield World(a, token(dashboard, a, "member"), token(dashboard, a, "reader"), m,
                        token(dashboard, b, "member"))  # fmt: skip
        finally:
            client.machines.delete(m, force=True)


def state_of(ctl: Controller, world: World) -> str:
    with ctl.client(world.project) as client:
        return str(client.machines.get(world.machine.id).state)


def test_run_a_machine_watch_it_start_read_its_logs_use_its_shell_and_stop_it(
    dashboard: Controller, browser: Browser
) -> None:
    project = new_project(dashboard, "web-run")  # its machines go with the test
    name = f"w-{uuid.uuid4().hex[:6]}"
    b = browser
    b.forget()
    b.open("/ui/machines")  # signed out: sent to sign in, and back here after
    b.wait(lambda: b.path.startswith("/ui/login"), "the sign-in page")
    assert b.low_contrast() == []
    b.screenshot("login")
    b.sign_in(token(dashboard, project, "member"))
    assert b.path.startswith("/ui/machines"), b.path

    run = b.one("form#run")
    if not run.is_displayed():  # folded away (in a <details>) where machines are listed
        b.one("details:has(form#run) > summary").click()
    run.find_element(By.NAME, "image").send_keys("busybox")
    run.find_element(By.NAME, "name").send_keys(name)
    run.find_element(By.NAME, "command").send_keys(f"sh -c '{TICKS}'")
    run.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    # The run lands on the list or on the machine's page; a change made elsewhere shows there
    # in place further on (the page is not loaded again).
    row = f"//table[@id='machines']//tr[starts-with(@id, 'm-')][.//a[normalize-space()='{name}']]"

    def rows() -> list[WebElement]:
        return list(b.driver.find_elements(By.XPATH, row))

    b.wait(lambda: b.all("#state") or rows() or b.all("[role=alert]"), "the new machine")
    assert not b.all("[role=alert]"), b.text("[role=alert]")
    on_list = not b.all("#state")
    if on_list:
        rows()[0].find_element(By.CSS_SELECTOR, "a").click()
        b.wait(lambda: b.all("#state"), "the machine's page")

    # A shell in the page: what is typed runs in the machine, and its output shows.
    b.wait(lambda: b.all("#shell button:not([hidden])"), "the shell's button")
    b.one("#shell button").click()  # a session is opened when asked for, not on every visit
    b.wait(lambda: "/ # " in b.text("#shell"), "the shell's prompt")  # as a person would
    b.one("#shell .xterm-helper-textarea").send_keys("echo $((6*7))-from-$(hostname)" + Keys.ENTER)
    b.wait(lambda: "42-from-" in b.text("#shell"), "the shell's output")
    # The keyboard is not trapped there: Tab is the shell's, Esc then Tab moves on.
    typed_in = b.one("#shell .xterm-helper-textarea")
    typed_in.send_keys(Keys.TAB)
    assert b.driver.switch_to.active_element == typed_in
    typed_in.send_keys(Keys.ESCAPE, Keys.TAB)
    assert b.driver.switch_to.active_element != typed_in

    # Its log tail grows as it prints, in place.
    b.mark()
    b.wait(lambda: "tick 2" in b.text("#logs"), "its first lines in #logs")
    b.wait(lambda: "tick 4" in b.text("#logs"), "#logs to grow")
    assert b.marked(), "the page was loaded again"
    b.screenshot("machine-shell")

    b.one(STOP).click()
    b.wait(lambda: b.text("#state") == "exited", "the machine to stop", timeout=30)
    assert not b.all(STOP)  # an exited machine offers start, not stop
    with dashboard.client(project) as client:
        assert client.machines.get(name).state == "exited"
        # Started from elsewhere (the SDK), it is seen to become running, and to stop, in place.
        b.mark()
        client.machines.start(name)
        b.wait(lambda: b.text("#state") == "running", "the machine to run again", timeout=60)
        b.wait(lambda: b.all(STOP), "its Stop button")
        client.machines.stop(name)
        b.wait(lambda: b.text("#state") == "exited", "the machine to stop again", timeout=30)
        assert b.marked(), "the page was loaded again"

    # Remove asks first: dismissed, the machine stays; accepted, it goes.
    b.mark()
    b.one(REMOVE).click()
    b.driver.switch_to.alert.dismiss()
    time.sleep(0.5)  # time for a form sent anyway to have left the page
    assert b.marked(), "the form was sent"
    with dashboard.client(project) as client:
        assert client.machines.get(name).state == "exited"
    b.one(REMOVE).click()
    b.driver.switch_to.alert.accept()
    b.wait(lambda: b.path.startswith("/ui/machines") and not b.all("#state"), "the machines list")

    def listed() -> bool:  # its node removes it and its disk: a moment later
        with dashboard.client(project) as client:
            return name in [m.name for m in client.machines.list()]

    b.wait(lambda: not listed(), "the machine to go", timeout=30)


def test_a_reader_sees_no_actions_and_its_forged_post_is_refused(
    dashboard: Controller, browser: Browser, world: World
) -> None:
    b, page = browser, f"/ui/machines/{world.machine.id}"
    b.sign_in(world.member, then=page)  # the same page for a member: it may stop it
    b.wait(lambda: b.all(STOP), "a member's Stop button")

    b.sign_in(world.reader, then=page)
    b.wait(lambda: b.text("#state") == "running", "the machine's state")
    assert not b.all(ACTIONS), "a reader is shown actions"
    b.open("/ui/machines")
    assert b.all(f"#m-{world.machine.id}")
    assert not b.all("form#run"), "a reader is shown the run form"

    forged = b.send("POST", f"{page}/stop", {"csrf": b.csrf(), "action": "stop"})
    assert forged == 403
    b.open(page)
    b.wait(lambda: b.text("#state") == "running", "the machine's state")
    assert state_of(dashboard, world) == "running"


def test_another_projects_machine_is_not_reachable_by_its_url(
    dashboard: Controller, browser: Browser, world: World
) -> None:
    b, page = browser, f"/ui/machines/{world.machine.id}"
    b.sign_in(world.member, then=page)  # its own project's member sees it
    b.wait(lambda: b.text("#state") == "running", "the machine's state")

    b.sign_in(world.other_member, then=page)
    b.wait(lambda: b.all("[role=alert]"), "a refusal")
    assert b.text("h1").strip() == "Not found"
    assert not b.all("#state")
    assert world.machine.name not in b.text("main")
    assert b.send("GET", page) == 404
    assert b.send("POST", f"{page}/stop", {"csrf": b.csrf(), "action": "stop"}) == 404
    b.open("/ui/machines")
    assert not b.all(f"#m-{world.machine.id}")
    assert state_of(dashboard, world) == "running"


def test_a_post_without_the_csrf_token_is_refused(
    dashboard: Controller, browser: Browser, world: World
) -> None:
    b, page = browser, f"/ui/machines/{world.machine.id}"
    b.sign_in(world.member, then=page)
    b.wait(lambda: b.all(STOP), "the Stop button")

    assert b.send("POST", f"{page}/stop", {"action": "stop"}) == 403
    assert b.send("POST", f"{page}/stop", {"action": "stop", "csrf": "x" * 43}) == 403
    assert state_of(dashboard, world) == "running"

    assert b.send("POST", "/ui/logout", {}) == 403
    assert b.send("GET", "/ui/machines") == 200  # still signed in
    assert b.send("POST", "/ui/logout", {"csrf": b.csrf()}) == 303  # the same, with the token
    b.open("/ui/machines")
    b.wait(lambda: b.path.startswith("/ui/login"), "the sign-in page")


LOAD = 5.0  # seconds for a page to load in the browser: its server time is ~0.1 s
MAIN_PAGES = ("images", "networks", "volumes", "usage", "invoices", "projects", "nodes")


def test_screenshots_of_the_main_pages(
    dashboard: Controller, browser: Browser, world: World
) -> None:
    """As the system admin, in project A: each page renders (no error) and is photographed."""
    b = browser
    b.sign_in(dashboard.token, then=f"/ui/machines?project={world.project}")
    b.wait(lambda: b.all(f"#m-{world.machine.id}"), "project A's machine in the list")
    assert b.low_contrast() == []
    # By keyboard: the first Tab offers to skip the header, and Enter takes the next Tab into
    # the page's content; every control there is reached by Tab, in the page's order.
    keys = ActionChains(b.driver)
    keys.send_keys(Keys.TAB).perform()
    assert b.driver.switch_to.active_element.text == "Skip to content"
    keys.send_keys(Keys.ENTER).perform()
    reached = []
    for _ in range(400):
        keys.send_keys(Keys.TAB).perform()
        here = b.driver.switch_to.active_element
        if here.tag_name == "body" or not here.find_elements(By.XPATH, "ancestor::main"):
            break
        reached.append(here)
    controls = "a[href], button, input:not([type=hidden]), select, summary"
    shown = [
        e for e in b.all(", ".join(f"main {c}" for c in controls.split(", "))) if e.is_displayed()
    ]
    assert reached and reached[0] == shown[0] and set(shown) <= set(reached)
    b.screenshot("machines")
    b.open(f"/ui/machines/{world.machine.id}")
    b.wait(lambda: "tick" in b.text("#logs"), "the machine's logs")
    assert b.low_contrast() == []
    b.screenshot("machine")
    for name in MAIN_PAGES:
        started = time.monotonic()
        b.open(f"/ui/{name}")
        # Pages left behind hold no connections: live streams kept open by a page the browser
        # keeps for Back would use up its 6 connections to the host, and stall the next page.
        assert time.monotonic() - started < LOAD, f"/ui/{name} took over {LOAD} s to load"
        b.wait(lambda: b.all("main h1"), f"the {name} page")
        assert not b.all("main [role=alert]"), (name, b.text("[role=alert]"))
        assert b.low_contrast() == [], name  # WCAG AA, as the page shows it
        b.screenshot(name)
