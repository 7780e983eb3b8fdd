"""The `stripe` check against the wire-format Stripe server, through the real stripe library: each
failure it names, and back to ok once fixed. Keys never appear unmasked."""

from __future__ import annotations

import logging

import pytest

from checks.base import CheckResult, Status, run_check
from checks.stripe import StripeCheck
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
