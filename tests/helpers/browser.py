"""A real browser for the dashboard's tests: Debian's Chromium, headless, driven by selenium
through Debian's chromium-driver (both from `make`'s apt packages; nothing is downloaded).

`Browser` signs in with a token as a person would (the sign-in form), waits for what the page
shows (a DOM condition, polled), posts as the page's own script could (`post`: with the
visitor's cookies, from the dashboard's origin) and writes screenshots to build/screenshots/,
which `make screenshots` copies into docs/.
"""

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).parents[2] / "build" / "screenshots"
WINDOW = (1280, 860)
# Chromium run as root (--no-sandbox), with nothing that reaches out of this machine on its own
# (this machine has no network beyond its package registries).
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--hide-scrollbars", "--force-device-scale-factor=1",
)  # fmt: skip

T = TypeVar("T")


class BrowserTimeout(AssertionError):
    pass


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a profile of its own, quit and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="hutch-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            *FLAGS,
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


class Browser:
    """One Chromium visiting the dashboard at `url` (http://host:port, no /ui)."""

    def __init__(self, driver: webdriver.Chrome, url: str) -> None:
        self.driver = driver
        self.url = url

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    @property
    def path(self) -> str:
        return str(self.driver.current_url).removeprefix(self.url)

    def forget(self) -> None:
        """A visitor with no session: the dashboard's cookies deleted."""
        self.open("/ui/login")
        self.driver.delete_all_cookies()

    def sign_in(self, token: str, then: str = "") -> None:
        """Through the sign-in form, as a person would; then at `then` (a /ui path) if given."""
        self.forget()
        self.open("/ui/login")
        form = self.one("form#login")
        form.find_element(By.NAME, "token").send_keys(token)
        form.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        self.wait(lambda: not self.path.startswith("/ui/login"), "the sign-in to be taken")
        if then:
            self.open(then)

    def one(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        """The text of the first element matching `css` ("" when there is none)."""
        found = self.all(css)
        try:
            return str(found[0].get_attribute("textContent") or "") if found else ""
        except StaleElementReferenceException:  # replaced by a live update as it was read
            return ""

    def wait(self, condition: Callable[[], T], what: str, timeout: float = 20.0) -> T:
        """`condition()`'s first truthy value, polled; after `timeout` seconds the test fails
        saying `what` it waited for, with a screenshot (build/screenshots/failed-*.png)."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(StaleElementReferenceException):
                value = condition()
                if value:
                    return value
            if time.monotonic() > deadline:
                shot = self.screenshot("failed-" + "".join(c if c.isalnum() else "-" for c in what))
                body = self.text("body")[:1500]
                raise BrowserTimeout(
                    f"waited {timeout:.0f} s for {what} at {self.path}; see {shot}; page:\n{body}"
                )
            time.sleep(0.1)

    def mark(self) -> None:
        """Mark the page's window: `marked()` is false once the page is loaded again."""
        self.driver.execute_script("window.hutchTestMark = true;")

    def marked(self) -> bool:
        return bool(self.driver.execute_script("return window.hutchTestMark === true;"))

    def csrf(self) -> str:
        """The session's CSRF value, as the page's forms carry it."""
        return str(self.one("input[name=csrf]").get_attribute("value"))

    def send(self, method: str, path: str, form: dict[str, str] | None = None) -> int:
        """`method` on `path` (a POST with `form`) from the page, with the visitor's cookies, as
        the page's script (or a forger who has the page) could; the status (a redirect's 3xx,
        not followed)."""
        script = """
            const [method, path, form, done] = arguments;
            fetch(path, {method, body: form === null ? null : new URLSearchParams(form),
                         credentials: "same-origin", redirect: "manual"})
              .then(r => done(r.type === "opaqueredirect" ? 303 : r.status))
              .catch(e => done(String(e)));
        """
        status: Any = self.driver.execute_async_script(script, method, path, form)
        assert isinstance(status, int), status
        return status

    def low_contrast(self) -> list[str]:
        """Each shown text on the page whose colour against its background is under WCAG AA
        (4.5:1, or 3:1 for large text), as `text: ratio`. The background is the nearest opaque
        one of its element or an ancestor; a colour with alpha is blended over it."""
        script = """
            const rgba = s => { const v = s.match(/[\\d.]+/g).map(Number);
                                return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1]; };
            const lum = c => { const f = x => { x /= 255;
                return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
                return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
            const under = el => { for (; el; el = el.parentElement) {
                const c = rgba(getComputedStyle(el).backgroundColor);
                if (c[3] > 0.99) return c; } return [255, 255, 255, 1]; };
            const bad = [];
            for (const el of document.querySelectorAll("body *")) {
              const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
              if (!own || !el.getClientRects().length) continue;
              const s = getComputedStyle(el);
              if (s.visibility !== "visible" || el.closest(".visually-hidden, .skip")) continue;
              const bg = under(el), fg = rgba(s.color);
              const mixed = fg.slice(0, 3).map((v, i) => v * fg[3] + bg[i] * (1 - fg[3]));
              const [hi, lo] = [lum(mixed), lum(bg)].sort((a, b) => b - a);
              const ratio = (hi + 0.05) / (lo + 0.05);
              const size = parseFloat(s.fontSize), bold = parseInt(s.fontWeight) >= 700;
              const large = size >= 24 || (size >= 18.66 && bold);
              const text = el.textContent.trim().slice(0, 40);
              if (ratio < (large ? 3 : 4.5)) bad.push(text + ": " + ratio.toFixed(2));
            }
            return bad;
        """
        found: Any = self.driver.execute_script(script)
        return [str(x) for x in found]

    def screenshot(self, name: str) -> Path:
        """The window as build/screenshots/NAME.png, the whole page's height."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        with contextlib.suppress(WebDriverException):
            self.driver.execute_script("window.scrollTo(0, 0)")
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(WINDOW[0], max(WINDOW[1], min(int(height), 2400)))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(*WINDOW)
        return path
