"""The status page of a real `healer run`, in Debian's chromium driven by Playwright: it loads with
no console error (so nothing broke the Content-Security-Policy or asked for anything that is not
there), a failing check appears within one of the page's own reloads of the fault and goes within
one of the fix, the page fits a phone, and the retry button re-queues an order in `needs_attention`
(a wrong token changes nothing), and it names the singleton work this replica leads. It also saves
the screenshot docs/status-page.png.

Chromium is Debian's (`apt-get install chromium`), never a download: the test fails, not skips,
when it is missing, since the suite must say when something it promises is no longer checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from fulfilment.models import utcnow
from healer.http.status_page import REFRESH_SECONDS
from tests.e2e.daemon import ADMIN, REPO, RunningDaemon, healer_env, running_daemon
from tests.eventually import Unmet, eventually
from tests.fakes.shop_fixtures import Shop

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = REPO / "docs" / "status-page.png"
# A check's status reaches the page at its next reload: at most one refresh after /health has it,
# plus the time a reload takes.
ONE_REFRESH_MS = (REFRESH_SECONDS + 5) * 1000
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True,
         "has_touch": True, "color_scheme": "dark"}
DESKTOP = {"viewport": {"width": 1100, "height": 900}, "color_scheme": "light"}


@dataclass
class Console:
    """What a page reported: console errors and warnings, uncaught errors, failed requests, loads."""

    messages: list[str] = field(default_factory=list)
    loads: int = 0

    def watch(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.messages.append(f"page error: {error}"))
        page.on("requestfailed", lambda request: self.messages.append(f"request failed: {request.url}"))
        page.on("load", lambda _page: self._loaded())
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.messages.append(f"{message.type}: {message.text}")

    def _loaded(self) -> None:
        self.loads += 1


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"Debian's chromium is not at {CHROMIUM}: `apt-get install chromium` (scripts/test.sh does); "
                    "the status page's browser tests cannot run without it")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def daemon(shop_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    # Checks every second (SendGrid's every 2 s): a fault is reported within a few seconds.
    env = healer_env(shop_env, HEALER_CHECK_INTERVAL_SECONDS="1")
    with running_daemon(env, tmp_path / "daemon.log") as running:
        eventually(lambda: check_status(running, "sendgrid") == "ok", timeout=60, what="sendgrid ok at start")
        yield running


def check_status(daemon: RunningDaemon, name: str) -> str | Unmet:
    status = str(json.loads(daemon.ops("GET", f"/health/{name}")[2])["status"])
    return status if status else Unmet(status)


def order_waiting_for_an_operator(shop: Shop) -> str:
    """A paid order that gave up at migration (its photo was missing, since restored)."""
    order_id = shop.paid_order(
        status="needs_attention", queued=False, title="Our first dance", attempts=1,
        paid_at=utcnow() - timedelta(minutes=42), payment_verified_at=utcnow() - timedelta(minutes=42),
        last_error_step="migrate_files", last_error_class="s3_missing_file",
        last_error="tmp/…/photo.jpg is missing from the bucket (restored since)",
    )
    return str(order_id)


def fits_the_screen(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


def test_an_operator_sees_a_fault_come_and_go_and_retries_an_order_from_a_phone(
    browser: Browser, shop: Shop, daemon: RunningDaemon,
) -> None:
    order_id = order_waiting_for_an_operator(shop)
    console = Console()
    phone = console.watch(browser.new_context(**PHONE).new_page())  # type: ignore[arg-type]

    phone.goto(daemon.ops_url + "/")
    attention = phone.locator(f"#order-{order_id}")
    expect(attention).to_contain_text("migrate_files / s3_missing_file")
    expect(phone.locator("#money")).to_contain_text("1 paid order not completed: 49.00 EUR")
    assert fits_the_screen(phone), "the status page scrolls sideways on a phone"
    # The one replica on PostgreSQL leads the singleton work it has tried (the stuck sweep runs at
    # start), as its /health says.
    expect(phone.locator("#leadership strong")).to_contain_text("stuck", timeout=ONE_REFRESH_MS)
    assert json.loads(daemon.ops("GET", "/health")[2])["leader"]["stuck"] is True
    expect(phone.locator("#leadership .pill")).to_have_text("leader")

    # The fault: SendGrid refuses the key. The page, left alone, shows it at its next reload.
    shop.sendgrid.set_key_valid(False)
    eventually(lambda: check_status(daemon, "sendgrid") == "failing", timeout=30, what="sendgrid failing")
    loads = console.loads
    expect(phone.locator("#check-sendgrid .pill")).to_have_text("failing", timeout=ONE_REFRESH_MS)
    expect(phone.locator("#verdict")).to_contain_text("sendgrid")
    expect(phone.locator("#check-sendgrid")).to_contain_text("Runbook 4 email sending failing")
    assert console.loads > loads, "the page showed the fault without reloading itself"

    desktop = console.watch(browser.new_context(**DESKTOP).new_page())  # type: ignore[arg-type]
    desktop.goto(daemon.ops_url + "/")
    expect(desktop.locator("#check-sendgrid .pill")).to_have_text("failing")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    desktop.screenshot(path=str(SCREENSHOT), full_page=True)
    desktop.close()

    # The fix: the check turns green, and the page says so at its next reload.
    shop.sendgrid.set_key_valid(True)
    eventually(lambda: check_status(daemon, "sendgrid") == "ok", timeout=30, what="sendgrid ok again")
    expect(phone.locator("#check-sendgrid .pill")).to_have_text("ok", timeout=ONE_REFRESH_MS)
    expect(phone.locator("#verdict")).not_to_contain_text("sendgrid")

    # Retry: the button leads to the order's page, whose form takes the admin token.
    button = attention.locator("a.button")
    box = button.bounding_box()
    assert box is not None and box["height"] >= 44 and box["width"] >= 44, f"tap target too small: {box}"
    button.click()
    expect(phone.locator("h1")).to_contain_text(order_id)
    assert fits_the_screen(phone), "the order page scrolls sideways on a phone"

    phone.fill("#token", "not-the-admin-token-0123456789abcdef")
    phone.get_by_role("button", name="Retry this order").click()
    expect(phone.locator("h1")).to_have_text("Wrong admin token")
    assert shop.order(order_id).status == "needs_attention"  # type: ignore[arg-type]

    phone.go_back()
    phone.fill("#token", ADMIN)
    phone.get_by_role("button", name="Retry this order").click()
    expect(phone.locator(".flash")).to_have_text(
        "Re-queued: the order resumes at paid. The timeline below shows each step as it runs.")
    assert phone.url.startswith(f"{daemon.ops_url}/orders/{order_id}?retried=paid")
    assert shop.order(order_id).status != "needs_attention"  # type: ignore[arg-type]

    def completed() -> bool:
        phone.reload()
        return phone.locator("main .pill").first.inner_text().strip().lower() == "completed"

    eventually(completed, timeout=60, interval=1, what="the retried order completed, on its page")
    expect(phone.locator("#timeline")).to_contain_text("retry requested on the status page")

    # The one 403 is the wrong token's answer, as the browser reports any 4xx document.
    refused = [m for m in console.messages if "status of 403" in m]
    assert len(refused) == 1, console.messages
    assert [m for m in console.messages if m not in refused] == []
    assert SCREENSHOT.stat().st_size > 20_000
