"""The `stripe` check against the wire-format Stripe server, through the real stripe library: each
failure it names, and back to ok once fixed; the webhook endpoint Stripe must post healer's events
to, read from the account (GET /v1/webhook_endpoints). Keys never appear unmasked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from checks.base import CheckResult, Status, run_check
from checks.stripe import StripeCheck
from healer.config import Settings
from healer.stripe.webhook_events import HANDLED_TYPES
from healer.wiring import Services, build_monitor
from tests.fakes.ports import free_port
from tests.fakes.stripe_server import FakeStripeServer


def check_for(server: FakeStripeServer, key: str | None = None, **config: object) -> StripeCheck:
    config.setdefault("webhook_secret", server.webhook_secret)
    return StripeCheck(api_key=key or server.api_key, api_base=server.url, **config)  # type: ignore[arg-type]


def shown(result: CheckResult) -> str:
    return f"{result.detail} {result.remedy} {result!r}"


def test_ok_for_a_valid_key_and_a_webhook_secret(stripe_server: FakeStripeServer) -> None:
    result = run_check(check_for(stripe_server))

    assert result.status is Status.OK, result
    assert result.detail.startswith("key sk_test_…") and "(test mode)" in result.detail
    assert stripe_server.request_count("/v1/payment_intents", "GET") == 1


def test_a_rejected_key_is_named_then_ok_once_restored(
    stripe_server: FakeStripeServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    check = check_for(stripe_server)
    stripe_server.revoke_key(stripe_server.api_key)

    failing = run_check(check)
    stripe_server.add_key(stripe_server.api_key)
    fixed = run_check(check)

    assert failing.status is Status.FAILING
    assert failing.detail.startswith("key rejected: sk_test_…") and "HTTP 401" in failing.detail
    assert "STRIPE_SECRET_KEY" in failing.remedy
    everything = shown(failing) + repr(check) + caplog.text
    assert stripe_server.api_key not in everything and stripe_server.webhook_secret not in everything
    assert fixed.status is Status.OK


def test_a_restricted_key_without_payment_intents_read_is_not_permitted(stripe_server: FakeStripeServer) -> None:
    result = run_check(check_for(stripe_server, stripe_server.restricted_key))

    assert result.status is Status.FAILING
    assert result.detail.startswith("not permitted: key rk_test_…") and "HTTP 403" in result.detail
    assert "PaymentIntents: Read" in result.remedy
    assert stripe_server.restricted_key not in shown(result)


def test_a_key_restricted_to_what_healer_needs_is_ok(stripe_server: FakeStripeServer) -> None:
    key = "rk_test_healeronly0123456789"
    stripe_server.add_key(key, {"payment_intents:read", "events:read"})

    assert run_check(check_for(stripe_server, key)).status is Status.OK


def test_a_missing_webhook_secret_is_a_warning(stripe_server: FakeStripeServer) -> None:
    missing = run_check(check_for(stripe_server, webhook_secret=None))
    malformed = run_check(check_for(stripe_server, webhook_secret=stripe_server.api_key))

    assert missing.status is Status.WARNING
    assert missing.detail.startswith("webhook secret not set: ") and "STRIPE_WEBHOOK_SECRET" in missing.remedy
    assert malformed.status is Status.WARNING and malformed.detail.startswith("webhook secret malformed: ")
    assert stripe_server.api_key not in shown(malformed)


def test_disabled_without_a_key() -> None:
    result = run_check(StripeCheck(api_key=None))

    assert result.status is Status.DISABLED
    assert "STRIPE_SECRET_KEY unset" in result.detail


def test_an_outage_fails_at_once_because_network_retries_are_off(stripe_server: FakeStripeServer) -> None:
    stripe_server.fail_next(500, count=1)

    failing = run_check(check_for(stripe_server))
    fixed = run_check(check_for(stripe_server))

    assert failing.status is Status.FAILING and failing.detail.startswith("Stripe unavailable (HTTP 500")
    assert fixed.status is Status.OK
    assert stripe_server.request_count("/v1/payment_intents") == 2


def test_rate_limiting_is_a_warning(stripe_server: FakeStripeServer) -> None:
    stripe_server.fail_next(429)

    result = run_check(check_for(stripe_server))

    assert result.status is Status.WARNING and result.detail.startswith("rate limited (HTTP 429")


def test_an_unreachable_api_is_named() -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    result = run_check(StripeCheck(api_key="sk_test_unreachable0123456789", api_base=base))

    assert result.status is Status.FAILING
    assert result.detail.startswith(f"unreachable: {base}") and "STRIPE_API_BASE" in result.remedy
    assert "sk_test_unreachable0123456789" not in shown(result)


# -- the webhook endpoint Stripe posts to --------------------------------------------------------------

URL = "https://shop.example/stripe/webhook"


def endpoints_check(server: FakeStripeServer, key: str | None = None) -> StripeCheck:
    return check_for(server, key, webhook_url=URL, webhook_events=HANDLED_TYPES)


def test_ok_when_an_enabled_endpoint_sends_the_three_event_types_to_healers_url(stripe_server: FakeStripeServer) -> None:
    stripe_server.remove_webhook_endpoints()
    stripe_server.add_webhook_endpoint("https://shop.example/old-webhook", ["*"])
    stripe_server.add_webhook_endpoint("https://Shop.Example/stripe/webhook/", [*HANDLED_TYPES, "invoice.paid"])

    result = run_check(endpoints_check(stripe_server))

    assert result.status is Status.OK, result
    assert result.detail.endswith(f"webhook secret set; endpoint {URL} enabled for 3 event types")
    assert stripe_server.request_count("/v1/webhook_endpoints", "GET") == 1
    stripe_server.remove_webhook_endpoints()
    stripe_server.add_webhook_endpoint(URL, ["*"])  # every event type includes healer's three
    assert run_check(endpoints_check(stripe_server)).status is Status.OK


@pytest.mark.parametrize("endpoints, detail, remedy", [
    ([], f"no webhook endpoint for {URL} (the account has none): paid orders are found by reconciliation only",
     f"add an endpoint for {URL} in the Stripe dashboard (Developers > Webhooks) with the events "
     "payment_intent.succeeded, payment_intent.payment_failed, charge.refunded, and set STRIPE_WEBHOOK_SECRET"),
    ([("https://old.shop.example/stripe/webhook", HANDLED_TYPES, "enabled")],
     f"no webhook endpoint for {URL} (Stripe posts only to https://old.shop.example/stripe/webhook)",
     f"add an endpoint for {URL}"),
    ([(URL, HANDLED_TYPES, "disabled")], f"webhook endpoint for {URL} is disabled: Stripe posts it no events",
     "enable it in the Stripe dashboard (Developers > Webhooks)"),
    ([(URL, ("payment_intent.succeeded",), "enabled"), (URL, HANDLED_TYPES, "disabled")],
     f"webhook endpoint for {URL} is not sent payment_intent.payment_failed, charge.refunded",
     "add payment_intent.payment_failed, charge.refunded to the endpoint's events"),
], ids=["none", "elsewhere", "disabled", "an event type missing"])
def test_an_endpoint_that_would_not_bring_healers_events_is_a_warning_naming_the_fix(
    stripe_server: FakeStripeServer, endpoints: list[tuple[str, tuple[str, ...], str]], detail: str, remedy: str
) -> None:
    stripe_server.remove_webhook_endpoints()
    for url, events, status in endpoints:
        stripe_server.add_webhook_endpoint(url, events, status)
    check = endpoints_check(stripe_server)

    warning = run_check(check)
    stripe_server.add_webhook_endpoint(URL)
    fixed = run_check(check)

    assert warning.status is Status.WARNING, warning
    assert warning.detail.startswith(detail), warning.detail
    assert remedy in warning.remedy, warning.remedy
    assert fixed.status is Status.OK, fixed


def test_endpoints_it_cannot_list_are_a_warning_once_the_key_has_proved_to_work(stripe_server: FakeStripeServer) -> None:
    payments_only = "rk_test_paymentsonly0123456789"
    stripe_server.add_key(payments_only, {"payment_intents:read", "events:read"})
    enough = "rk_test_healeronly0123456789"
    stripe_server.add_key(enough, {"payment_intents:read", "events:read", "webhook_endpoints:read"})

    not_permitted = run_check(endpoints_check(stripe_server, payments_only))
    stripe_server.fail_next(500, path="/v1/webhook_endpoints")
    unavailable = run_check(endpoints_check(stripe_server))
    stripe_server.fail_next(429, path="/v1/webhook_endpoints")
    throttled = run_check(endpoints_check(stripe_server))

    assert not_permitted.status is Status.WARNING
    assert not_permitted.detail.startswith("webhook endpoints not readable: key rk_test_…6789 valid (test mode)")
    assert "Webhook Endpoints: Read" in not_permitted.remedy and payments_only not in shown(not_permitted)
    assert (unavailable.status, throttled.status) == (Status.WARNING, Status.WARNING)
    assert unavailable.detail.startswith("webhook endpoints not read: ") and "HTTP 500" in unavailable.detail
    assert "HTTP 429" in throttled.detail
    assert run_check(endpoints_check(stripe_server, enough)).status is Status.OK


def test_the_daemons_check_looks_for_its_public_base_urls_webhook(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALER_DATA_DIR": str(tmp_path), "STRIPE_SECRET_KEY": "sk_test_x",
                                  "STRIPE_WEBHOOK_SECRET": "whsec_x", "PUBLIC_BASE_URL": "https://posters.example/"})
    services = Services.build(settings)
    try:
        check = build_monitor(settings, services).check("stripe")
    finally:
        services.close()

    assert isinstance(check, StripeCheck)
    assert (check.webhook_url, check.webhook_events) == ("https://posters.example/stripe/webhook", HANDLED_TYPES)
