"""The status page (`GET /`), an order's page (`GET /orders/{id}`) and the retry form, over ASGI on
the operator app as healer.wiring builds it: real PostgreSQL (SQLite too, for the money-at-risk
query), a real health monitor with stand-in checks, real orders, story lines, remediations,
reconciliation runs and webhook events; replicas' leadership of singleton work is real too (advisory
locks, healer.jobs.leadership). What a real browser makes of the pages is
tests/browser/test_status_page.py's question."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from checks.base import Check, Runbook, Status
from checks.registry import CHECK_NAMES
from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, Step, transaction, utcnow
from healer import db, orders
from healer.config import RemediationMode, Settings
from healer.db.models import OrphanPayment, ReconcileRun, RunResult, WebhookEvent
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.http.runbook import guide_page
from healer.http.status_data import RUNBOOK_ANCHORS
from healer.jobs.leadership import Leadership, leadership_for
from healer.remediation.audit import Action, Remediation, Result
from healer.wiring import Services, build_apps
from tests.eventually import eventually
from tests.fakes.tcp_proxy import TcpProxy
from tests.healer.listeners import Listeners, get
from tests.healer.test_health import Peer, StandIn

ADMIN = "status-page-admin-token-0123456789abcdef"
STRIPE_KEY = "sk_test_statuspage0123456789abcdefghij"


class Page(HTMLParser):
    """A page's links, ids, tags, text and the nonce of its style element."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.style_nonces: list[str] = []
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self.refresh: str | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        if found.get("id"):
            self.ids.append(str(found["id"]))
        for name in ("href", "src", "action"):
            if found.get(name) and tag != "form":
                self.links.append(str(found[name]))
        if tag == "style":
            self.style_nonces.append(str(found.get("nonce")))
        if tag == "form":
            self.forms.append(found)
        if tag == "input":
            self.inputs.append(found)
        if tag == "meta" and found.get("http-equiv") == "refresh":
            self.refresh = found.get("content")

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self._text).split())


@dataclass
class Operator:
    client: TestClient
    sessions: sessionmaker[Session]
    metrics: Metrics
    monitor: HealthMonitor
    services: Services
    leadership: Leadership | None

    def page(self, path: str = "/") -> Page:
        answer = self.client.get(path)
        assert answer.status_code == 200, answer.text
        return Page(answer.text)


def checks(*specs: tuple[str, Runbook, Peer], critical: tuple[str, ...] = ()) -> list[Check]:
    """Stand-in checks named like the daemon's, each with its runbook issue."""
    made = []
    for name, runbook, peer in specs:
        cls = type(f"StandIn_{name}", (StandIn,), {"name": name, "runbook": runbook})
        made.append(cls(peer=peer, failure_threshold=1, critical=name in critical))
    return made


@pytest.fixture
def operator_app(pg_engine: Engine, pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """The operator app as the daemon builds it; `database_url` may lead through a proxy, and the
    monitor carries no redactor of its own, so that what the page shows is redacted by the page.
    `replica`: this daemon is a replica by that name, with its leadership of `roles` (declared, as
    the daemon's jobs do; none asked for yet), on its own engine as a process has; None: no roles."""
    made: list[Services] = []
    leaderships: list[Leadership] = []

    def make(*, admin: str | None = ADMIN, stripe: bool = True, monitored: list[Check] | None = None,
             database_url: str = pg_url, replica: str | None = None,
             roles: tuple[str, ...] = ("reconcile", "stuck", "canary", "containers")) -> Operator:
        env = {"DATABASE_URL": database_url, "HEALER_DATA_DIR": str(tmp_path / "data"),
               "STRIPE_WEBHOOK_SECRET": "whsec_statuspage0123456789abcdef"}
        if admin:
            env["HEALER_ADMIN_TOKEN"] = admin
        if stripe:
            env["STRIPE_SECRET_KEY"] = STRIPE_KEY
        settings = Settings.from_env(env)
        services = Services.build(settings)
        made.append(services)
        monitor = HealthMonitor(monitored or [])
        metrics = Metrics()
        leadership = None
        if replica is not None:
            leadership = leadership_for(services.engine, replica)
            leaderships.append(leadership)
            for role in roles:
                leadership.declare(role)
        apps = build_apps(settings, services, services.pipeline(lambda _inputs: b""), monitor, metrics,
                          lambda: (True, "ok"), lambda _order_id, _why: False, leadership)
        return Operator(TestClient(apps.operator, follow_redirects=False), services.sessions, metrics, monitor,
                        services, leadership)

    yield make
    for leadership in leaderships:
        leadership.release()
    for services in made:
        services.close()


def add_order(sessions: sessionmaker[Session], status: OrderStatus, *, amount: int = 4900, currency: str = "eur",
              paid_ago: timedelta | None = timedelta(minutes=5), **columns: Any) -> uuid.UUID:
    order_id = columns.pop("id", None) or uuid.uuid4()
    values: dict[str, Any] = {"id": order_id, "status": status, "email": "ada@example.com", "amount_cents": amount,
                              "currency": currency, "template": "a4-portrait", "title": "Our song"}
    if paid_ago is not None:
        values["paid_at"] = utcnow() - paid_ago
    values.update(columns)
    with transaction(sessions) as session:
        session.add(Order(**values))
    return order_id


def status_of(sessions: sessionmaker[Session], order_id: uuid.UUID) -> str:
    with sessions() as session:
        order = session.get(Order, order_id)
        assert order is not None
        return order.status.value


def story_length(sessions: sessionmaker[Session], order_id: uuid.UUID) -> int:
    with sessions() as session:
        return len(session.scalars(select(OrderEvent.id).where(OrderEvent.order_id == order_id)).all())


# -- money at risk ------------------------------------------------------------------------------------


def test_money_at_risk_is_paid_orders_neither_completed_nor_refunded_in_one_query(any_engine: Engine) -> None:
    sessions = db.make_session_factory(any_engine)
    add_order(sessions, OrderStatus.PAID, amount=4900, paid_ago=timedelta(minutes=3))
    add_order(sessions, OrderStatus.PDF_RENDERED, amount=2500, paid_ago=timedelta(hours=2))
    add_order(sessions, OrderStatus.NEEDS_ATTENTION, amount=1000, currency="usd", paid_ago=timedelta(minutes=30))
    add_order(sessions, OrderStatus.FILES_MIGRATED, amount=3000, currency="jpy", paid_ago=timedelta(minutes=1))
    # Not at risk: no money taken yet, delivered, given back, or gave up before any payment succeeded.
    add_order(sessions, OrderStatus.PENDING_PAYMENT, paid_ago=None)
    add_order(sessions, OrderStatus.COMPLETED, paid_ago=timedelta(days=3))
    add_order(sessions, OrderStatus.REFUNDED, paid_ago=timedelta(days=3))
    add_order(sessions, OrderStatus.NEEDS_ATTENTION, paid_ago=None, last_error_class="payment_unverified")
    statements: list[str] = []
    event.listen(any_engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    risk = orders.money_at_risk(sessions)

    assert (risk.orders, risk.amounts) == (4, {"eur": 7400, "jpy": 3000, "usd": 1000})
    age = risk.oldest_age_seconds()
    assert age is not None and 2 * 3600 - 60 < age < 2 * 3600 + 60
    assert len(statements) == 1 and "GROUP BY" in statements[0]


def test_money_at_risk_can_be_answered_from_the_status_index(pg_engine: Engine) -> None:
    sessions = db.make_session_factory(pg_engine)
    captured: list[tuple[str, Any]] = []
    event.listen(pg_engine, "before_cursor_execute", lambda *args: captured.append((args[2], args[3])))
    orders.money_at_risk(sessions)
    statement, parameters = captured[0]

    with pg_engine.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")  # as on a table too large to scan
        plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + statement, parameters))

    assert "ix_orders_status" in plan, plan


def test_the_page_shows_money_at_risk_per_currency_and_the_oldest_past_the_sla(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    add_order(operator.sessions, OrderStatus.PAID, amount=4900, paid_ago=timedelta(hours=2))
    add_order(operator.sessions, OrderStatus.PAID, amount=1500, currency="jpy", paid_ago=timedelta(minutes=1))

    text = operator.page().text

    assert "2 paid orders not completed: 49.00 EUR, 1,500 JPY" in text  # yen have no hundredths
    assert re.search(r"The oldest was paid 2 h( 0 min)? ago .* past the 10 min SLA", text), text


def test_with_nothing_at_risk_the_page_says_none(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    add_order(operator.sessions, OrderStatus.COMPLETED)

    assert "None: every paid order is completed or refunded." in operator.page().text


# -- checks -------------------------------------------------------------------------------------------


def test_checks_show_worst_first_with_detail_remedy_latency_last_success_and_runbook_links(
        operator_app: Callable[..., Operator]) -> None:
    s3, sendgrid = Peer(), Peer()
    operator = operator_app(monitored=checks(("database", Runbook.DATABASE, Peer()), ("s3", Runbook.S3_PERMISSION, s3),
                                             ("sendgrid", Runbook.EMAIL, sendgrid), critical=("database", "s3")))
    operator.monitor.run_all()
    s3.set(Status.FAILING, "access denied on bucket shop-uploads")
    sendgrid.set(Status.WARNING, "rate limited")
    operator.monitor.run_all()

    answer = operator.client.get("/")
    page = Page(answer.text)

    order = [name for name in page.ids if name.startswith("check-")]
    assert order == ["check-s3", "check-sendgrid", "check-database"]  # failing, warning, then the rest
    assert "Failing: s3" in page.text
    assert "access denied on bucket shop-uploads Do: fix the peer" in page.text
    assert re.search(r"latency \d+ ms · last success \d+ s ago \(\d\d:\d\d:\d\d UTC\) · checked \d+ s ago", page.text)
    assert "/runbook#runbook-1-s3-permission-denied" in page.links
    assert "/runbook#check-s3" in page.links and "/runbook#check-sendgrid" in page.links
    assert page.refresh == "10"
    assert "script" not in page.tags
    assert answer.headers["cache-control"] == "no-store"


def test_a_check_not_run_yet_is_pending_and_no_monitor_says_so(operator_app: Callable[..., Operator]) -> None:
    pending = operator_app(monitored=checks(("s3", Runbook.S3_PERMISSION, Peer())))
    assert "s3 pending not run yet" in pending.page().text
    assert "No checks are configured on this daemon." in operator_app().page().text


def test_every_runbook_link_on_the_pages_lands_on_a_heading_of_the_guide(
        operator_app: Callable[..., Operator]) -> None:
    names = [(name, runbook, Peer(Status.FAILING, "down")) for name, runbook in
             zip(CHECK_NAMES, [*Runbook, *Runbook], strict=False)]
    operator = operator_app(monitored=checks(*names))
    operator.monitor.run_all()
    failed = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.EMAIL,
                       last_error_class="email_rejected", last_error="550 no such mailbox")
    with transaction(operator.sessions) as session:
        session.add(ReconcileRun(window_start=utcnow(), started_at=utcnow() - timedelta(hours=2),
                                 finished_at=utcnow() - timedelta(hours=2), result=RunResult.SUCCESS))
        session.add(OrphanPayment(payment_intent_id="pi_orphan_1", amount_cents=100, currency="eur",
                                  created=utcnow()))
    operator.metrics.webhook_events.labels("unknown", "bad_signature").inc()

    guide = Page(guide_page()).ids
    links = [link for path in ("/", f"/orders/{failed}") for link in operator.page(path).links
             if link.startswith("/runbook#")]

    assert {link.split("#")[1] for link in links} - set(guide) == set()
    assert set(RUNBOOK_ANCHORS.values()) <= set(guide)
    assert {f"check-{name}" for name in CHECK_NAMES} <= set(guide)
    assert {"runbook-4-email-sending-failing", "healerorphanpayments", "check-stripe"} <= {
        link.split("#")[1] for link in links}


# -- needs attention, the order's page and the retry form ----------------------------------------------


def test_needs_attention_orders_show_their_last_error_and_lead_to_the_retry_form(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.MIGRATE_FILES,
                         last_error_class="s3_missing_file", last_error="tmp/x/photo.jpg is missing", attempts=1)

    status = operator.page()
    order = operator.page(f"/orders/{order_id}")

    assert "migrate_files / s3_missing_file: tmp/x/photo.jpg is missing" in status.text
    assert f"/orders/{order_id}#retry" in status.links and "/runbook#runbook-2-s3-files-missing" in status.links
    assert order.forms == [{"class": "retry", "method": "post", "action": f"/orders/{order_id}/retry"}]
    assert [(i["name"], i["type"]) for i in order.inputs] == [("username", "text"), ("token", "password")]
    assert order.refresh is None  # no reload: it would wipe a half-typed token


def test_past_the_first_orders_in_needs_attention_the_page_says_where_the_rest_are(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    for _ in range(21):
        add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER)

    page = operator.page()

    assert len([name for name in page.ids if name.startswith("order-")]) == 20
    assert "More are waiting than shown here: healer orders list --status needs_attention" in page.text


def test_the_status_page_costs_a_few_queries_however_many_orders(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    for _ in range(15):
        add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER)
    statements: list[str] = []
    event.listen(operator.services.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    operator.page()

    # money at risk, needs attention, remediations, reconciliation (runs, orphans), webhooks
    assert len(statements) == 6, statements


def test_the_retry_form_re_queues_the_order_and_the_page_says_so(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER,
                         last_error_class="render_error", last_error="font missing")

    answer = operator.client.post(f"/orders/{str(order_id)[:8]}/retry", data={"token": ADMIN})

    assert answer.status_code == 303
    assert answer.headers["location"] == f"/orders/{order_id}?retried=files_migrated"
    assert status_of(operator.sessions, order_id) == "files_migrated"
    page = operator.page(answer.headers["location"])
    assert "Re-queued: the order resumes at files_migrated." in page.text
    assert "render requeued" in page.text and "retry requested on the status page" in page.text


def test_a_wrong_token_is_403_and_changes_nothing(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER)
    before = story_length(operator.sessions, order_id)

    answers = [operator.client.post(f"/orders/{order_id}/retry", data=form) for form in
               ({"token": "wrong"}, {"token": ADMIN[:-1]}, {"token": ""}, {"other": ADMIN}, {"token": ADMIN + "x"})]

    assert [a.status_code for a in answers] == [403] * 5
    assert "Wrong admin token" in answers[0].text and "Nothing was changed." in answers[0].text
    assert answers[0].headers["content-type"].startswith("text/html")
    assert status_of(operator.sessions, order_id) == "needs_attention"
    assert story_length(operator.sessions, order_id) == before


def test_without_an_admin_token_there_is_no_button_the_page_says_why_and_a_post_is_refused(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app(admin=None)
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER)

    status, order = operator.page(), operator.page(f"/orders/{order_id}")
    refused = operator.client.post(f"/orders/{order_id}/retry", data={"token": "anything"})

    assert f"/orders/{order_id}#retry" not in status.links
    assert "Retry from this page is off: HEALER_ADMIN_TOKEN is not set on this daemon." in status.text
    assert order.forms == [] and "HEALER_ADMIN_TOKEN is not set on this daemon" in order.text
    assert refused.status_code == 403 and "Retry is off" in refused.text
    assert status_of(operator.sessions, order_id) == "needs_attention"


@pytest.mark.parametrize(("status", "says"), [
    (OrderStatus.COMPLETED, "the order is completed"),
    (OrderStatus.REFUNDED, "the order was refunded"),
    (OrderStatus.PENDING_PAYMENT, "the payment has not succeeded"),
])
def test_an_order_with_nothing_to_retry_has_no_button_and_a_post_is_409(
        operator_app: Callable[..., Operator], status: OrderStatus, says: str) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, status)

    page = operator.page(f"/orders/{order_id}")
    answer = operator.client.post(f"/orders/{order_id}/retry", data={"token": ADMIN})

    assert page.forms == [] and says in page.text
    assert answer.status_code == 409 and says in answer.text
    assert status_of(operator.sessions, order_id) == status.value


def test_ids_are_taken_whole_or_as_a_unique_prefix_as_the_api_takes_them(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    first = add_order(operator.sessions, OrderStatus.PAID, id=uuid.UUID("abcd1111-0000-4000-8000-000000000000"))
    add_order(operator.sessions, OrderStatus.PAID, id=uuid.UUID("abcd2222-0000-4000-8000-000000000000"))
    expected = {"/orders/abcd1": 200, f"/orders/{first}": 200, f"/orders/{first.hex}": 200,
                "/orders/abcd": 409, "/orders/ffff9999": 404, f"/orders/{uuid.uuid4()}": 404,
                "/orders/not-an-id": 422, "/orders/ab": 422}

    codes = {path: operator.client.get(path).status_code for path in expected}
    posts = {path: operator.client.post(path, data={"token": ADMIN}) for path in
             ["/orders/abcd/retry", "/orders/ffff9999/retry", "/orders/zz<b>/retry"]}

    assert codes == expected
    assert {path: answer.status_code for path, answer in posts.items()} == {
        "/orders/abcd/retry": 409, "/orders/ffff9999/retry": 404, "/orders/zz<b>/retry": 422}
    assert "<b>" not in posts["/orders/zz<b>/retry"].text
    assert {status_of(operator.sessions, first)} == {"paid"}


def test_the_retry_form_takes_only_a_small_urlencoded_form(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER)
    url = f"/orders/{order_id}/retry"

    as_json = operator.client.post(url, json={"token": ADMIN})
    too_large = operator.client.post(url, content=b"token=" + b"x" * 5000,
                                     headers={"content-type": "application/x-www-form-urlencoded"})
    not_utf8 = operator.client.post(url, content=b"token=\xff\xfe",
                                    headers={"content-type": "application/x-www-form-urlencoded"})

    assert (as_json.status_code, too_large.status_code, not_utf8.status_code) == (415, 413, 400)
    assert status_of(operator.sessions, order_id) == "needs_attention"


def test_a_flag_in_the_order_page_url_only_ever_names_a_status(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.PAID)

    forged = operator.page(f"/orders/{order_id}?retried=Call+0800+to+get+your+refund")
    named = operator.page(f"/orders/{order_id}?retried=paid")

    assert "Re-queued" not in forged.text and "0800" not in forged.text
    assert "Re-queued: the order resumes at paid." in named.text


def test_the_timeline_shows_every_attempt_with_duration_error_and_trace_id(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.FILES_MIGRATED)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with transaction(operator.sessions) as session:
        session.add(OrderEvent(order_id=order_id, step=Step.MIGRATE_FILES, outcome=Outcome.OK, duration_seconds=0.42,
                               message="copied 3 files", trace_id=trace))
        session.add(OrderEvent(order_id=order_id, step=Step.RENDER, outcome=Outcome.FAILED, duration_seconds=2.5,
                               error_class="render_error", message="font Lora.ttf failed to load"))

    text = operator.page(f"/orders/{order_id}").text

    assert "migrate files ok <time> copied 3 files Took 420 ms Trace " + trace in _dates_masked(text)
    assert "render failed <time> font Lora.ttf failed to load Took 2.5 s Error class render_error" \
        in _dates_masked(text)


def _dates_masked(text: str) -> str:
    return re.sub(r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d UTC", "<time>", text)


# -- escaping and redaction ----------------------------------------------------------------------------


def test_order_and_check_text_is_escaped_and_secrets_are_masked(operator_app: Callable[..., Operator]) -> None:
    hostile = f"<script>alert(1)</script> key {STRIPE_KEY}"
    operator = operator_app(monitored=checks(("s3", Runbook.S3_PERMISSION, Peer(Status.FAILING, hostile))))
    operator.monitor.run_all()
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, title=hostile, last_error=hostile,
                         last_error_step=Step.RENDER)
    with transaction(operator.sessions) as session:
        session.add(OrderEvent(order_id=order_id, step=Step.RENDER, outcome=Outcome.GAVE_UP, message=hostile))
        session.add(Remediation(action=Action.RERENDER_PDF, target=str(order_id), reason=hostile,
                                result=Result.FAILURE, mode=RemediationMode.ON, detail=hostile))

    bodies = [operator.client.get(path).text for path in ("/", f"/orders/{order_id}")]

    for body in bodies:
        assert "<script>" not in body and STRIPE_KEY not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt; key sk_test_…ghij" in body
    assert bodies[0].count("sk_test_…ghij") == 5  # the check, the order's title and error, the remediation's two
    assert bodies[1].count("sk_test_…ghij") == 3  # title, last error, story line


# -- reconciliation, webhooks, remediations -------------------------------------------------------------


def test_reconciliation_shows_its_last_run_last_success_and_orphans(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    now = utcnow()
    with transaction(operator.sessions) as session:
        session.add(ReconcileRun(window_start=now, started_at=now - timedelta(minutes=10),
                                 finished_at=now - timedelta(minutes=10), result=RunResult.SUCCESS, payments_read=12))
        session.add(ReconcileRun(window_start=now, started_at=now - timedelta(minutes=5),
                                 finished_at=now - timedelta(minutes=5), result=RunResult.FAILURE,
                                 error="StripeError: 500 from api.stripe.com"))
        session.add(OrphanPayment(payment_intent_id="pi_1", amount_cents=100, currency="eur", created=now))
        session.add(OrphanPayment(payment_intent_id="pi_2", amount_cents=100, currency="eur", created=now,
                                  resolved_at=now, resolution="by operator: refunded"))

    text = operator.page().text
    off = operator_app(stripe=False).page().text

    assert "failing The last run failed: StripeError: 500 from api.stripe.com" in text
    assert re.search(r"Last run 5 min( \d+ s)? ago .*: failure; 0 payments read", text)
    assert re.search(r"Last success 10 min( \d+ s)? ago", text)
    assert "1 payment without an order" in text
    assert "off Not run here: no STRIPE_SECRET_KEY" in off


def test_reconciliation_shows_the_sales_its_last_run_judged_and_those_no_webhook_brought(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    with transaction(operator.sessions) as session:
        session.add(ReconcileRun(window_start=utcnow(), started_at=utcnow(), finished_at=utcnow(),
                                 result=RunResult.SUCCESS, payments_read=9, payments_succeeded=3, payments_missed=2))

    text = operator.page().text

    assert ("Sales and webhooks 2 of 3 succeeded payments judged by the last run reached healer only through "
            "reconciliation : no webhook for them ( what to do )") in text
    assert 'href="/runbook#healerwebhooksmissing"' in operator.client.get("/").text


def test_reconciliation_without_a_recent_success_is_late(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    with transaction(operator.sessions) as session:
        session.add(ReconcileRun(window_start=utcnow(), started_at=utcnow() - timedelta(hours=2),
                                 finished_at=utcnow() - timedelta(hours=2), result=RunResult.SUCCESS))

    assert "late No run has succeeded for too long" in operator.page().text


def test_webhooks_show_stored_events_of_the_day_and_this_daemons_refusals(
        operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    now = utcnow()
    with transaction(operator.sessions) as session:
        for index, (result, ago) in enumerate([("applied", 1), ("applied", 2), ("duplicate", 3), ("applied", 30 * 60)]):
            session.add(WebhookEvent(id=f"evt_{index}", type="payment_intent.succeeded", result=result,
                                     received_at=now - timedelta(minutes=ago)))
    quiet = operator.page().text
    operator.metrics.webhook_events.labels("unknown", "bad_signature").inc(3)
    operator.metrics.webhook_events.labels("payment_intent.succeeded", "applied").inc()

    text = operator.page().text

    assert "ok Events in the last 24 h: 2 applied, 1 duplicate; the newest 1 min" in quiet
    assert "refused Events in the last 24 h" in text
    assert "Refused by this daemon since it started: 3 bad signature." in text


def test_recent_remediations_are_listed_newest_first(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    with transaction(operator.sessions) as session:
        for minutes, action, result in [(9, Action.FREE_SCRATCH, Result.SUCCESS),
                                        (2, Action.RESTART_CONTAINER, Result.ESCALATED)]:
            session.add(Remediation(at=utcnow() - timedelta(minutes=minutes), action=action, target="shop-minio-1",
                                    reason="unhealthy for 90 s", result=result, mode=RemediationMode.ON))

    text = operator.page().text

    assert text.index("restart container escalated") < text.index("free scratch success")
    assert "shop-minio-1 : unhealthy for 90 s" in text


# -- which singleton work this replica leads ------------------------------------------------------------

ROLES = ("reconcile", "stuck", "canary", "containers")
NOT_TRIED = "not tried yet: containers (its work has not come up here)"
AS_HEALTH = "As of each role's last try and the database check, as /health reports it."


def leadership_line(operator: Operator) -> tuple[str, str | None]:
    """The page's leadership line as text, and the roles it names as led (its <strong>), or None
    for no line."""
    found = re.search(r'<p id="leadership">(.*?)</p>', operator.client.get("/").text, re.S)
    if found is None:
        return "", None
    led = re.search(r"<strong>(.*?)</strong>", found.group(1))
    return Page(found.group(1)).text, led.group(1) if led else None


def health_leader(operator: Operator) -> dict[str, bool] | None:
    leader: dict[str, bool] | None = operator.client.get("/health").json().get("leader")
    return leader


def test_each_replica_says_which_singleton_work_it_leads_and_which_another_replica_leads(
        operator_app: Callable[..., Operator]) -> None:
    a, b, c = (operator_app(replica=f"replica-{name}") for name in "abc")
    assert a.leadership and b.leadership and c.leadership
    assert a.leadership.lead("reconcile") and a.leadership.lead("stuck") and b.leadership.lead("canary")
    assert not a.leadership.lead("canary") and not b.leadership.lead("reconcile") and not b.leadership.lead("stuck")
    assert not any(c.leadership.lead(role) for role in ("reconcile", "stuck", "canary"))

    lines = {name: leadership_line(replica) for name, replica in zip("abc", (a, b, c), strict=True)}

    assert lines["a"] == ("leader This replica leads reconcile, stuck ; follows canary (another replica leads it); "
                          f"{NOT_TRIED}. {AS_HEALTH}", "reconcile, stuck")
    assert lines["b"] == ("leader This replica leads canary ; follows reconcile, stuck (another replica leads them); "
                          f"{NOT_TRIED}. {AS_HEALTH}", "canary")
    assert lines["c"] == ("follower This replica leads nothing ; follows reconcile, stuck, canary (another replica "
                          f"leads them); {NOT_TRIED}. {AS_HEALTH}", "nothing")
    # The page names as led exactly what /health's `leader` says is: the one reading of one object.
    for (_, led), replica in zip(lines.values(), (a, b, c), strict=True):
        health = health_leader(replica)
        assert health is not None and list(health) == list(ROLES)
        assert (led or "").split(", ") == [role for role, leads in health.items() if leads] or ["nothing"]

    a.leadership.release()  # replica a stops (SIGTERM): another takes its roles at their next period

    assert leadership_line(a)[0] == ("stopping This replica is stopping and has given up all singleton work "
                                     f"(reconcile, stuck, canary, containers): the other replicas take it over at "
                                     f"their next period. {AS_HEALTH}")
    assert health_leader(a) == dict.fromkeys(ROLES, False)
    assert b.leadership.lead("reconcile") and b.leadership.lead("stuck")
    assert leadership_line(b)[1] == "reconcile, stuck, canary"


def test_a_replica_that_lost_its_database_leads_nothing_and_the_page_says_why(
        operator_app: Callable[..., Operator], pg_proxy: TcpProxy, pg_url: str) -> None:
    cut_off = operator_app(replica="replica-a", database_url=pg_proxy.replace_port(pg_url))
    other = operator_app(replica="replica-b").leadership
    assert cut_off.leadership and other
    assert cut_off.leadership.lead("reconcile") and cut_off.leadership.lead("stuck")
    assert not other.lead("reconcile")
    cut_off.services.engine.dispose()
    pg_proxy.cut()

    assert not cut_off.leadership.lead("reconcile") and not cut_off.leadership.lead("stuck")
    # The server freed the cut-off replica's locks with its connections: another replica leads.
    eventually(lambda: other.lead("reconcile"), what="replica b to take reconcile over")
    answer = cut_off.client.get("/")
    line, led = leadership_line(cut_off)
    health = health_leader(cut_off)
    pg_proxy.restore()

    assert answer.status_code == 200
    assert line == ("no database This replica leads nothing ; cannot lead reconcile, stuck: the database did not "
                    "answer ; not tried yet: canary, containers (their work has not come up here). "
                    f"{AS_HEALTH}")
    assert led == "nothing" and health == dict.fromkeys(ROLES, False)
    assert 'class="pill is-failing">no database<' in answer.text
    # Once the database answers again it is a follower: replica b kept reconcile, and stuck is free.
    assert not cut_off.leadership.lead("reconcile") and cut_off.leadership.lead("stuck")
    assert leadership_line(cut_off)[0].startswith(
        "leader This replica leads stuck ; follows reconcile (another replica leads it); not tried yet")


def test_without_singleton_roles_there_is_no_line_and_on_sqlite_the_process_runs_alone(
        operator_app: Callable[..., Operator], tmp_path: Path) -> None:
    no_leadership, no_roles = operator_app(), operator_app(replica="replica-a", roles=())
    alone = operator_app(replica="demo", database_url=f"sqlite:///{tmp_path / 'alone.sqlite3'}")
    db.upgrade(alone.services.engine)
    assert alone.leadership and alone.leadership.lead("reconcile") and alone.leadership.lead("stuck")

    assert "leadership" not in no_leadership.page().ids and health_leader(no_leadership) is None
    assert "leadership" not in no_roles.page().ids and health_leader(no_roles) == {}
    assert leadership_line(alone) == (
        "alone This process runs alone (one process on its SQLite file), so all singleton work is its own: it leads "
        "reconcile, stuck ; not tried yet: canary, containers (their work has not come up here). " + AS_HEALTH,
        "reconcile, stuck")
    assert health_leader(alone) == {"reconcile": True, "stuck": True, "canary": False, "containers": False}


# -- outages, headers, schema and listeners -------------------------------------------------------------


def test_a_database_outage_leaves_the_checks_on_the_page_and_names_the_outage(
        operator_app: Callable[..., Operator], pg_proxy: TcpProxy, pg_url: str) -> None:
    database = Peer()
    operator = operator_app(database_url=pg_proxy.replace_port(pg_url),
                            monitored=checks(("database", Runbook.DATABASE, database), critical=("database",)))
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER)
    operator.services.engine.dispose()
    pg_proxy.cut()
    database.set(Status.FAILING, "server unreachable")
    operator.monitor.run_all()

    status = operator.client.get("/")
    order = operator.client.get(f"/orders/{order_id}")
    retry = operator.client.post(f"/orders/{order_id}/retry", data={"token": ADMIN})
    pg_proxy.restore()

    assert status.status_code == 200
    assert "Failing: database" in Page(status.text).text
    assert Page(status.text).text.count("database unavailable: OperationalError") == 5  # each section says so
    assert (order.status_code, order.headers["retry-after"]) == (503, "5")
    assert "Database unavailable" in order.text and order.headers["content-type"].startswith("text/html")
    assert retry.status_code == 503
    assert status_of(operator.sessions, order_id) == "needs_attention"


def test_the_pages_load_nothing_from_elsewhere_and_run_nothing(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.NEEDS_ATTENTION, last_error_step=Step.RENDER)

    for path in ("/", f"/orders/{order_id}", "/orders/ffff0000"):
        answer = operator.client.get(path)
        page = Page(answer.text)
        policy = answer.headers["content-security-policy"]
        nonce = re.search(r"style-src 'nonce-([^']+)'", policy)
        assert nonce is not None and page.style_nonces == [nonce.group(1)]
        assert policy.startswith("default-src 'none';") and "form-action 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "script" not in policy
        assert "script" not in page.tags
        assert [link for link in page.links if not link.startswith(("/", "#", "data:"))] == []
    first, second = (operator.client.get("/").headers["content-security-policy"] for _ in range(2))
    assert first != second  # a fresh nonce per answer


def test_head_answers_the_pages_and_none_is_in_the_openapi_document(operator_app: Callable[..., Operator]) -> None:
    operator = operator_app()
    order_id = add_order(operator.sessions, OrderStatus.PAID)

    heads = [operator.client.head(path) for path in ("/", f"/orders/{order_id}")]
    paths = set(operator.client.get("/openapi.json").json()["paths"])

    assert [(h.status_code, h.content) for h in heads] == [(200, b""), (200, b"")]
    assert not paths & {"/", "/orders/{order_id}", "/orders/{order_id}/retry"}


def test_the_public_listener_serves_none_of_the_pages(listeners: Listeners) -> None:
    order = f"/orders/{uuid.uuid4()}"

    public = {path: get(listeners.public + path).status for path in ("/", order, "/runbook")}
    form = urllib.request.Request(listeners.public + order + "/retry", data=b"token=x", method="POST",
                                  headers={"content-type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(form, timeout=10)

    assert public == dict.fromkeys(public, 404)
    assert posted.value.code == 404
    assert get(listeners.operator + "/").status == 200
