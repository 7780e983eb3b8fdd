"""Delivery proven: SendGrid's Signed Event Webhook (`POST /sendgrid/events`) on a real `healer run`.

The fake SendGrid server signs its batches as SendGrid does (its signature verifies with the
`sendgrid` library's own helper, and healer's verifier accepts the test vector SendGrid publishes),
and its events carry the custom arguments healer's mailer set when it sent the email. A bounced
download email parks its completed order in `needs_attention` (`email_undelivered`) with a line in
its story, counted in healer_email_events_total; a retry sends the email again. Batches that are
forged, stale, from the future, oversize, malformed or replayed are refused (or recognised) and
change nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis import GenerationMode
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from fulfilment.mailer import KIND_ARG, ORDER_ARG, EmailKind, SendGridMailer, download_email
from fulfilment.models import Order, OrderEvent
from fulfilment.pipeline import Pipeline
from healer import db
from healer.config import Settings, SettingsError
from healer.db.models import SendGridEvent
from healer.health.metrics import Metrics
from healer.jobs.notices import delay_email, refund_email
from healer.sendgrid.events import EmailEvent, EmailEventLabel, parse
from healer.sendgrid.signature import NotVerified, Verifier, public_key_text
from healer.sendgrid.webhook import events_router
from tests.badinput.test_openapi_fuzz import _fuzz
from tests.e2e.daemon import ADMIN, RunningDaemon, healer_env, start_daemon
from tests.eventually import eventually
from tests.fakes.sendgrid_server import EventSignature, SendGridServer, SentMessage, post
from tests.fakes.shop_fixtures import FROM_EMAIL, Shop
from tests.fakes.tcp_proxy import TcpProxy

PATH = "/sendgrid/events"
# The test vector of SendGrid's own helpers (sendgrid-python, -java, -csharp, -nodejs): a payload
# SendGrid signed, with the key its Mail Settings showed.
SENDGRID_KEY = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7y"
                "AQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==")
SENDGRID_PAYLOAD = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'
SENDGRID_SIGNATURE = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0="
SENDGRID_TIMESTAMP = "1588788367"

pytestmark = pytest.mark.timeout(240)


# -- a daemon that takes SendGrid's events -------------------------------------------------------------


def stop(daemon: RunningDaemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)  # not SIGKILL: its render workers exit with it
    try:
        daemon.process.wait(timeout=30)
    except Exception:
        daemon.process.kill()
        daemon.process.wait()


@pytest.fixture
def daemon(shop: Shop, shop_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    env = healer_env(shop_env, SENDGRID_WEBHOOK_PUBLIC_KEY=shop.sendgrid.public_key)
    running = start_daemon(env, tmp_path / "daemon.log")
    try:
        yield running
    finally:
        stop(running)


def completed_order(shop: Shop) -> tuple[uuid.UUID, SentMessage]:
    """A paid order the daemon completed, and the download email it sent."""
    order_id = shop.paid_order()
    eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")
    [message] = download_emails(shop, order_id)
    return order_id, message


def download_emails(shop: Shop, order_id: uuid.UUID) -> list[SentMessage]:
    return [m for m in shop.sendgrid.messages
            if m.custom_args == {ORDER_ARG: str(order_id), KIND_ARG: EmailKind.DOWNLOAD.value}]


def email_events(daemon: RunningDaemon) -> dict[str, float]:
    """healer_email_events_total, by event, as the daemon exports it."""
    text = daemon.ops("GET", "/metrics")[2].decode()
    return {event: float(value) for event, value in
            re.findall(r'^healer_email_events_total\{event="(\w+)"\} (\S+)$', text, re.MULTILINE)}


def counted(daemon: RunningDaemon) -> dict[str, float]:
    return {event: n for event, n in email_events(daemon).items() if n}


def state(sessions: sessionmaker[Session]) -> tuple[Any, ...]:
    """Every order, every line of every story, every event id stored: what a batch may change."""
    with sessions() as session:
        orders = sorted(tuple(row) for row in session.execute(select(
            Order.id, Order.status, Order.last_error_step, Order.last_error_class, Order.last_error,
            Order.next_attempt_at, Order.email_message_id, Order.completed_at)))
        lines = session.scalar(select(func.count()).select_from(OrderEvent))
        stored = session.scalar(select(func.count()).select_from(SendGridEvent))
    return tuple(orders), lines, stored


# -- the whole path, on a running daemon ---------------------------------------------------------------


@pytest.mark.slow
def test_a_bounced_download_email_needs_attention_and_a_retry_sends_it_again(
    shop: Shop, daemon: RunningDaemon
) -> None:
    order_id, first = completed_order(shop)
    bounce = shop.sendgrid.event(first, "bounce")

    status, body = shop.sendgrid.post_events(daemon.base_url + PATH, [bounce])

    assert (status, json.loads(body)) == (200, {"received": 1, "duplicates": 0})
    order = shop.order(order_id)
    assert (order.status, order.last_error_step, order.last_error_class) == (
        "needs_attention", "email", "email_undelivered")
    line = shop.events(order_id)[-1]
    assert (line.step, line.outcome, line.error_class) == ("email", "gave_up", "email_undelivered")
    assert line.message.startswith("Download email bounced: 550 5.1.1 The email account that you tried to reach")
    assert f"to a…@example.com, SendGrid event {bounce['sg_event_id']}" in line.message
    assert counted(daemon) == {"bounce": 1.0}
    story = json.loads(daemon.ops("GET", f"/api/orders/{order_id}")[2])
    assert story["events"][-1]["outcome"] == "gave_up" and story["last_error_class"] == "email_undelivered"

    # SendGrid posts the batch again (or someone replays it, freshly signed): nothing changes.
    before = state(shop.sessions)
    replayed = shop.sendgrid.post_events(daemon.base_url + PATH, [bounce])
    assert (replayed[0], json.loads(replayed[1])) == (200, {"received": 1, "duplicates": 1})
    assert state(shop.sessions) == before and counted(daemon) == {"bounce": 1.0}

    # The operator corrects the address in the shop and retries: the download email goes again.
    retried = daemon.ops("POST", f"/api/orders/{order_id}/retry", {"Authorization": f"Bearer {ADMIN}"})
    assert retried[0] == 202 and json.loads(retried[2])["status"] == "pdf_rendered"
    eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the retry to email again")
    first_again, second = download_emails(shop, order_id)
    assert first_again == first and second.text == first.text  # the same link
    assert shop.order(order_id).email_message_id == second.message_id

    # A late event about the first email cannot park the order its second email completed.
    late = shop.sendgrid.event(first, "dropped")
    assert shop.sendgrid.post_events(daemon.base_url + PATH, [late])[0] == 200
    assert shop.order(order_id).status == "completed"
    line = shop.events(order_id)[-1]
    assert (line.outcome, line.error_class) == ("undelivered", "email_undelivered")
    assert line.message.endswith("an earlier email than the order's latest, so the order stays as it is")
    assert counted(daemon) == {"bounce": 1.0, "dropped": 1.0}
    assert "Traceback" not in daemon.log()


@pytest.mark.slow
def test_forged_stale_future_oversize_and_malformed_batches_are_refused_and_change_nothing(
    shop: Shop, daemon: RunningDaemon
) -> None:
    _order_id, message = completed_order(shop)
    sendgrid, url = shop.sendgrid, daemon.base_url + PATH
    batch, headers = sendgrid.signed_batch([sendgrid.event(message, "bounce")])
    now = int(time.time())
    huge = json.dumps([sendgrid.event(message, "delivered", padding="x" * 1024 * 1024)]).encode()
    no_id = {k: v for k, v in sendgrid.event(message, "bounce").items() if k != "sg_event_id"}
    refusals = {
        "forged": (batch, sendgrid.sign(batch, signature=EventSignature.FORGED)),
        "tampered": (batch.replace(b'"bounce"', b'"delivered"', 1), headers),
        "unsigned": (batch, {"Content-Type": "application/json"}),
        "stale": sendgrid.signed_batch([sendgrid.event(message, "bounce")], timestamp=now - 600),
        "future": sendgrid.signed_batch([sendgrid.event(message, "bounce")], timestamp=now + 600),
        "oversize": (huge, sendgrid.sign(huge)),
        "malformed JSON": (b'[{"event": "bounce", ', sendgrid.sign(b'[{"event": "bounce", ')),
        "not a batch": (b'{"event": "bounce"}', sendgrid.sign(b'{"event": "bounce"}')),
        "no event id": sendgrid.signed_batch([no_id]),
        "not UTF-8": (b'["\xff"]', sendgrid.sign(b'["\xff"]')),
    }
    before = state(shop.sessions)

    answers = {name: post(url, body, sent)[0] for name, (body, sent) in refusals.items()}

    assert answers == {"forged": 403, "tampered": 403, "unsigned": 403, "stale": 403, "future": 403,
                       "oversize": 413, "malformed JSON": 400, "not a batch": 400, "no event id": 400,
                       "not UTF-8": 403}
    assert state(shop.sessions) == before
    assert counted(daemon) == {}
    refused = daemon.log()
    assert re.search(r"signed 60\d s ago, over the 300 s tolerance", refused) and "in the future" in refused
    assert "not a batch of SendGrid events: 0.sg_event_id: Field required" in refused
    assert post(url, batch, headers)[0] == 200  # the genuine batch, once: the refusals left it applicable
    assert counted(daemon) == {"bounce": 1.0}


@pytest.mark.slow
def test_delivered_spam_reports_and_events_that_are_not_for_an_order_here(shop: Shop, daemon: RunningDaemon) -> None:
    order_id, message = completed_order(shop)
    sendgrid = shop.sendgrid
    # The shop's own email (no custom arguments of healer's), and one healer sent for another database.
    stranger = SentMessage("shopOwnMessage01", FROM_EMAIL, ("bob@example.com",), "Your receipt", "x", None, {})
    elsewhere = SentMessage("otherDatabase001", FROM_EMAIL, ("eve@example.com",), "Your poster", "x", None, {},
                            custom_args={ORDER_ARG: str(uuid.uuid4()), KIND_ARG: "download"})
    batch = [sendgrid.event(message, "processed"), sendgrid.event(message, "delivered"),
             sendgrid.event(message, "spamreport"), sendgrid.event(stranger, "bounce"),
             sendgrid.event(elsewhere, "dropped")]

    status, body = sendgrid.post_events(daemon.base_url + PATH, batch)

    assert (status, json.loads(body)) == (200, {"received": 5, "duplicates": 0})
    assert shop.order(order_id).status == "completed"
    lines = [(e.step, e.outcome, e.error_class) for e in shop.events(order_id)][-2:]
    assert lines == [("email", "delivered", None), ("email", "spam_report", None)]
    delivered, spam = (e.message for e in shop.events(order_id)[-2:])
    assert delivered == f"Download email delivered (to a…@example.com, SendGrid event {batch[1]['sg_event_id']})"
    assert spam.startswith("Download email reported as spam by its recipient (to a…@example.com")
    assert counted(daemon) == {"other": 2.0, "delivered": 1.0, "spamreport": 1.0, "unknown_order": 1.0}
    with shop.sessions() as session:
        stored = sorted(session.scalars(select(SendGridEvent.result)))
    assert stored == ["ignored", "ignored", "recorded", "recorded", "unknown_order"]


def test_without_a_verification_key_there_is_no_route_and_the_daemon_says_delivery_is_unproven(
    shop: Shop, shop_env: dict[str, str], tmp_path: Path
) -> None:
    running = start_daemon(healer_env(shop_env), tmp_path / "daemon.log")
    try:
        body, headers = shop.sendgrid.signed_batch([])
        answer = post(running.base_url + PATH, body, headers)
    finally:
        stop(running)

    assert answer[0] == 404 and b"SENDGRID_WEBHOOK_PUBLIC_KEY" in answer[1]
    log = running.log()
    unproven = [line for line in log.splitlines() if "email delivery is unproven" in line]
    assert len(unproven) == 1 and "SENDGRID_WEBHOOK_PUBLIC_KEY unset" in unproven[0]
    # ... a line of the start-up banner, which is a WARNING while it says so
    before = log.split("email delivery is unproven")[0].splitlines()
    assert any("WARNING" in line and "starting as worker" in line for line in before)


@pytest.mark.slow
def test_generated_signed_batches_are_answered_as_documented_and_never_a_server_error(
    shop: Shop, daemon: RunningDaemon
) -> None:
    """Schemathesis against the route, with every generated body signed by the fake SendGrid: the
    event models, not the signature, decide; nothing is a 5xx, and a refusal changes nothing."""
    schema = schemathesis.openapi.from_url(f"{daemon.ops_url}/public/openapi.json")
    [operation] = [result.ok() for result in schema.get_all_operations() if result.ok().path == PATH]
    seen: Counter[str] = Counter()

    def sign(case: Any) -> dict[str, Any]:
        try:
            body = json.dumps(case.body).encode()
        except TypeError:  # negative mode's raw bytes: sent as generated, unsigned (a 403)
            return {}
        return {"data": body, "headers": shop.sendgrid.sign(body)}

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        _fuzz(shop, daemon.base_url, operation, mode, seen, sign=sign, examples=40)

    assert {f"POST {PATH} 200", f"POST {PATH} 400"} <= set(seen), seen
    assert "Traceback" not in daemon.log()


# -- the route on other databases: down, and the embedded SQLite -----------------------------------------


def completed_on(shop: Shop) -> tuple[uuid.UUID, SentMessage, Pipeline]:
    """An order completed by the shop's pipeline on the shop's (possibly swapped) database."""
    pipeline = shop.pipeline()
    order_id = shop.paid_order()
    assert pipeline.claim_order(order_id, "test")
    pipeline.run(order_id, "test")
    [message] = download_emails(shop, order_id)
    return order_id, message, pipeline


def route(shop: Shop, pipeline: Pipeline) -> tuple[TestClient, Metrics]:
    metrics = Metrics()
    app = FastAPI()
    app.include_router(events_router(shop.sessions, pipeline, shop.sendgrid.public_key, metrics))
    return TestClient(app), metrics


def test_a_database_outage_is_503_and_the_batch_applies_once_it_is_back(
    shop: Shop, pg_proxy: TcpProxy, pg_url: str
) -> None:
    engine = db.make_engine(pg_proxy.replace_port(pg_url))
    proxied = dataclasses.replace(shop, sessions=db.make_session_factory(engine))
    order_id, message, pipeline = completed_on(proxied)
    client, metrics = route(proxied, pipeline)
    body, headers = shop.sendgrid.signed_batch([shop.sendgrid.event(message, "blocked")])

    pg_proxy.cut()
    try:
        refused = client.post(PATH, content=body, headers=headers)
    finally:
        pg_proxy.restore()
    applied = client.post(PATH, content=body, headers=headers)
    engine.dispose()

    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "5")
    assert (applied.status_code, applied.json()) == (200, {"received": 1, "duplicates": 0})
    assert shop.order(order_id).last_error_class == "email_undelivered"
    assert shop.events(order_id)[-1].message.startswith("Download email blocked by the receiving server: 550 5.7.1")
    assert metrics.registry.get_sample_value("healer_email_events_total", {"event": "blocked"}) == 1.0


def test_events_apply_once_on_the_embedded_sqlite_database(shop: Shop, sqlite_engine: Engine) -> None:
    lite = dataclasses.replace(shop, sessions=db.make_session_factory(sqlite_engine))
    order_id, message, pipeline = completed_on(lite)
    client, _ = route(lite, pipeline)
    body, headers = shop.sendgrid.signed_batch([shop.sendgrid.event(message, "dropped"),
                                                shop.sendgrid.event(message, "bounce")])

    first = client.post(PATH, content=body, headers=headers).json()
    again = client.post(PATH, content=body, headers=headers).json()

    assert (first, again) == ({"received": 2, "duplicates": 0}, {"received": 2, "duplicates": 2})
    order = lite.order(order_id)
    assert (order.status, order.last_error_class) == ("needs_attention", "email_undelivered")
    # The dropped event parked it; the bounce that came with it found it parked already.
    assert [(e.outcome, e.error_class) for e in lite.events(order_id)][-2:] == [
        ("gave_up", "email_undelivered"), ("undelivered", "email_undelivered")]
    assert lite.events(order_id)[-1].message.endswith("the order is needs_attention, not completed, so it stays as it is")


def test_a_bounced_notice_is_a_line_in_the_story_and_leaves_the_order_as_it_is(shop: Shop) -> None:
    order_id, _download, pipeline = completed_on(shop)
    mailer = SendGridMailer(shop.sendgrid.api_key, FROM_EMAIL, api_base=shop.sendgrid.url)
    mailer.send(delay_email(to="ada@example.com", title="Us", order_id=str(order_id)))
    notice = shop.sendgrid.messages[-1]
    client, metrics = route(shop, pipeline)
    body, headers = shop.sendgrid.signed_batch([shop.sendgrid.event(notice, "bounce")])

    assert client.post(PATH, content=body, headers=headers).status_code == 200

    assert notice.custom_args == {ORDER_ARG: str(order_id), KIND_ARG: "delay_notice"}
    assert shop.order(order_id).status == "completed"
    line = shop.events(order_id)[-1]
    assert (line.step, line.outcome, line.error_class) == ("email", "undelivered", None)
    assert line.message.startswith("Delay notice bounced: 550 5.1.1")
    assert metrics.registry.get_sample_value("healer_email_events_total", {"event": "bounce"}) == 1.0
    refund = refund_email(to="ada@example.com", title="Us", order_id=str(order_id), error_class=None)
    assert refund.tracking() == {ORDER_ARG: str(order_id), KIND_ARG: "refund_notice"}


# -- the pieces, on their own ---------------------------------------------------------------------------


def test_the_verifier_accepts_what_sendgrid_signed_and_nothing_else() -> None:
    signed_at = int(SENDGRID_TIMESTAMP)
    verifier = Verifier(public_key_text(SENDGRID_KEY), clock=lambda: signed_at + 10)

    verifier.verify(SENDGRID_PAYLOAD, SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP)
    for body, signature, timestamp in [(SENDGRID_PAYLOAD + b" ", SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP),
                                       (SENDGRID_PAYLOAD, SENDGRID_SIGNATURE, str(signed_at + 1)),
                                       (SENDGRID_PAYLOAD, SENDGRID_SIGNATURE[:-8] + "AAAAAAA=", SENDGRID_TIMESTAMP),
                                       (SENDGRID_PAYLOAD, "not base64 at all!", SENDGRID_TIMESTAMP),
                                       (SENDGRID_PAYLOAD, "", SENDGRID_TIMESTAMP),
                                       (SENDGRID_PAYLOAD, SENDGRID_SIGNATURE, "1588788367.5"),
                                       (SENDGRID_PAYLOAD, SENDGRID_SIGNATURE, "١٥٨٨٧٨٨٣٦٧")]:
        with pytest.raises(NotVerified):
            verifier.verify(body, signature, timestamp)
    with pytest.raises(NotVerified, match="over the 300 s tolerance"):
        Verifier(SENDGRID_KEY, clock=lambda: signed_at + 301).verify(SENDGRID_PAYLOAD, SENDGRID_SIGNATURE,
                                                                      SENDGRID_TIMESTAMP)
    with pytest.raises(NotVerified, match="in the future"):
        Verifier(SENDGRID_KEY, clock=lambda: signed_at - 61).verify(SENDGRID_PAYLOAD, SENDGRID_SIGNATURE,
                                                                     SENDGRID_TIMESTAMP)


def test_the_fake_signs_its_batches_as_sendgrid_does(sendgrid_server: SendGridServer) -> None:
    mailer = SendGridMailer(sendgrid_server.api_key, FROM_EMAIL, api_base=sendgrid_server.url)
    mailer.send(download_email(to="ada@example.com", title="Us", link="https://shop.example/download/abc",
                               order_id="0f9d1c52-0000-4000-8000-000000000001"))
    [message] = sendgrid_server.messages

    body, headers = sendgrid_server.signed_batch([sendgrid_server.event(message, "delivered")])

    assert body.endswith(b"}]\r\n") and headers["Content-Type"] == "application/json"
    assert EventWebhook(sendgrid_server.public_key).verify_signature(
        body.decode(), headers["X-Twilio-Email-Event-Webhook-Signature"],
        headers["X-Twilio-Email-Event-Webhook-Timestamp"])
    [event] = parse(body)
    assert (event.label, event.order_id, event.kind) == (
        EmailEventLabel.DELIVERED, uuid.UUID("0f9d1c52-0000-4000-8000-000000000001"), EmailKind.DOWNLOAD)
    assert event.sg_message_id and event.sg_message_id.startswith(message.message_id + ".")


def test_the_download_email_tells_sendgrid_its_order_and_kind(sendgrid_server: SendGridServer) -> None:
    order_id = str(uuid.uuid4())
    mailer = SendGridMailer(sendgrid_server.api_key, FROM_EMAIL, api_base=sendgrid_server.url)

    mailer.send(download_email(to="ada@example.com", title="Us", link="https://shop.example/download/abc",
                               order_id=order_id))

    [message] = sendgrid_server.messages
    assert message.custom_args == {"healer_order_id": order_id, "healer_email": "download"}
    assert message.body["custom_args"] == message.custom_args  # top-level: every personalization's events
    # The names the events are read by are the ones the mailer sends.
    assert {EmailEvent.model_fields["order_arg"].alias, EmailEvent.model_fields["kind_arg"].alias} == {
        ORDER_ARG, KIND_ARG}


def test_sendgrids_event_names_and_a_blocked_bounce_are_told_apart() -> None:
    def label(**fields: Any) -> EmailEventLabel:
        return EmailEvent.model_validate({"sg_event_id": "e1", **fields}).label

    assert label(event="bounce", type="bounce") is EmailEventLabel.BOUNCE
    assert label(event="bounce", type="blocked") is EmailEventLabel.BLOCKED
    assert label(event="dropped") is EmailEventLabel.DROPPED
    assert label(event="deferred") is label(event="open") is EmailEventLabel.OTHER
    with pytest.raises(ValueError):  # strict: SendGrid's custom arguments are strings
        EmailEvent.model_validate({"sg_event_id": "e1", "event": "bounce", "healer_order_id": 7})


def test_a_configured_verification_key_must_be_sendgrids_kind(tmp_path: Path) -> None:
    def settings(key: str) -> Settings:
        return Settings.from_env({"HEALER_DATA_DIR": str(tmp_path), "SENDGRID_WEBHOOK_PUBLIC_KEY": key})

    def spki(key: Any) -> str:
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    pem = "-----BEGIN PUBLIC KEY-----\n" + "\n".join(SENDGRID_KEY[i:i + 64] for i in range(0, len(SENDGRID_KEY), 64)) \
          + "\n-----END PUBLIC KEY-----\n"
    assert settings(pem).sendgrid_webhook_public_key == SENDGRID_KEY
    assert Settings.from_env({"HEALER_DATA_DIR": str(tmp_path)}).sendgrid_webhook_public_key is None  # optional
    for wrong, why in [("SG.not-a-key", "not base64"), ("aGVsbG8gd29ybGQ=", "not a public key"),
                       (spki(ec.generate_private_key(ec.SECP384R1())), "not an ECDSA P-256 key"),
                       (spki(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "not an ECDSA P-256 key")]:
        with pytest.raises(SettingsError) as refused:
            settings(wrong)
        assert str(refused.value).startswith("SENDGRID_WEBHOOK_PUBLIC_KEY is not SendGrid's verification key: "), wrong
        assert why in str(refused.value)
