"""StripePayments through the real `stripe` library against the fake Stripe API over HTTP."""

from __future__ import annotations

import time

import pytest

from fulfilment.errors import ErrorClass, StepError
from fulfilment.payments import DisabledPayments, StripePayments, VerifiedPayment
from fulfilment.secrets import mask_secret
from tests.fakes.ports import free_port
from tests.fakes.stripe_server import FakeStripeServer

ORDER_ID = "3f6c2a9e-8d47-4b1a-9c55-0e2f4d6b8a10"


def payments_for(server: FakeStripeServer, key: str | None = None, timeout: float = 5.0) -> StripePayments:
    return StripePayments(key or server.api_key, api_base=server.url, timeout=timeout)


def paid_intent(server: FakeStripeServer, **overrides: object) -> str:
    fields: dict[str, object] = {
        "amount": 2999, "currency": "eur", "metadata": {"order_id": ORDER_ID}, "status": "succeeded",
    }
    fields.update(overrides)
    return str(server.create_payment_intent(**fields)["id"])  # type: ignore[arg-type]


def verify(payments: StripePayments, pi_id: str, amount: int = 2999, currency: str = "EUR") -> VerifiedPayment:
    return payments.verify(
        order_id=ORDER_ID, payment_intent_id=pi_id, amount_cents=amount, currency=currency
    )


def error_of(payments: StripePayments, pi_id: str, **kwargs: object) -> StepError:
    with pytest.raises(StepError) as caught:
        verify(payments, pi_id, **kwargs)  # type: ignore[arg-type]
    return caught.value


# -- verified -------------------------------------------------------------------------------------


def test_succeeded_intent_matching_the_order_is_verified(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server)

    verified = verify(payments_for(stripe_server), pi_id, currency="EUR")

    assert verified == VerifiedPayment(pi_id, 2999, "eur", "succeeded")
    assert stripe_server.request_count(f"/v1/payment_intents/{pi_id}", "GET") == 1


def test_slow_answer_within_the_timeout_is_still_verified(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server)
    stripe_server.set_delay(0.3)

    assert verify(payments_for(stripe_server, timeout=3.0), pi_id).status == "succeeded"


# -- definitely not paid: PAYMENT_UNVERIFIED --------------------------------------------------------


def test_amount_mismatch_names_both_amounts(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server, amount=1999)

    err = error_of(payments_for(stripe_server), pi_id, amount=2999)

    assert err.error_class is ErrorClass.PAYMENT_UNVERIFIED
    assert "amount 1999 != order amount 2999" in err.message


def test_currency_mismatch_is_unverified(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server, currency="usd")

    err = error_of(payments_for(stripe_server), pi_id, currency="EUR")

    assert err.error_class is ErrorClass.PAYMENT_UNVERIFIED
    assert "currency usd != order currency eur" in err.message


@pytest.mark.parametrize("metadata", [{"order_id": "another-order"}, {}])
def test_intent_paid_for_another_order_is_unverified(
    stripe_server: FakeStripeServer, metadata: dict[str, str]
) -> None:
    pi_id = paid_intent(stripe_server, metadata=metadata)

    err = error_of(payments_for(stripe_server), pi_id)

    assert err.error_class is ErrorClass.PAYMENT_UNVERIFIED
    assert "metadata.order_id" in err.message and ORDER_ID in err.message


def test_unknown_intent_is_unverified(stripe_server: FakeStripeServer) -> None:
    err = error_of(payments_for(stripe_server), "pi_DoesNotExist000000000000")

    assert err.error_class is ErrorClass.PAYMENT_UNVERIFIED
    assert err.message == "payment_intent pi_DoesNotExist000000000000 not found"


@pytest.mark.parametrize(
    "status", ["requires_payment_method", "requires_confirmation", "requires_action", "canceled"]
)
def test_intent_that_did_not_succeed_is_unverified(
    stripe_server: FakeStripeServer, status: str
) -> None:
    pi_id = paid_intent(stripe_server, status=status)

    err = error_of(payments_for(stripe_server), pi_id)

    assert err.error_class is ErrorClass.PAYMENT_UNVERIFIED
    assert f"status {status}, not succeeded" in err.message


def test_mismatch_is_final_even_while_processing(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server, status="processing", amount=100)

    assert error_of(payments_for(stripe_server), pi_id).error_class is ErrorClass.PAYMENT_UNVERIFIED


# -- no answer yet: PAYMENT_TRANSIENT ---------------------------------------------------------------


def test_processing_intent_is_transient(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server, status="processing")

    err = error_of(payments_for(stripe_server), pi_id)

    assert err.error_class is ErrorClass.PAYMENT_TRANSIENT
    assert "status processing" in err.message


def test_rejected_key_is_transient_and_never_shown(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server)
    bad_key = "sk_test_51WrongKeyWrongKeyWrongKeyWrongKey9876"

    err = error_of(payments_for(stripe_server, key=bad_key), pi_id)

    assert err.error_class is ErrorClass.PAYMENT_TRANSIENT
    assert "STRIPE_SECRET_KEY" in err.message and "401" in err.message
    assert bad_key not in err.message and bad_key not in repr(err)
    assert "sk_test_…9876" in err.message


def test_restricted_key_without_permission_is_transient(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server)

    err = error_of(payments_for(stripe_server, key=stripe_server.restricted_key), pi_id)

    assert err.error_class is ErrorClass.PAYMENT_TRANSIENT
    assert "403" in err.message and stripe_server.restricted_key not in err.message


def test_key_of_the_other_mode_is_transient_not_unverified(stripe_server: FakeStripeServer) -> None:
    pi_id = paid_intent(stripe_server)  # a test-mode payment
    live_key = "sk_live_51LiveKeyLiveKeyLiveKeyLiveKey5555"
    stripe_server.add_key(live_key)

    err = error_of(payments_for(stripe_server, key=live_key), pi_id)

    assert err.error_class is ErrorClass.PAYMENT_TRANSIENT
    assert "other Stripe mode" in err.message and live_key not in err.message


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_transient_without_library_retries(
    stripe_server: FakeStripeServer, status: int
) -> None:
    pi_id = paid_intent(stripe_server)
    stripe_server.fail_next(status=status, count=3)

    err = error_of(payments_for(stripe_server), pi_id)

    assert err.error_class is ErrorClass.PAYMENT_TRANSIENT
    assert f"HTTP {status}" in err.message and "request req_" in err.message
    # One request: the pipeline, not the library, decides when to ask again.
    assert stripe_server.request_count() == 1


def test_hanging_server_times_out_within_the_configured_timeout(
    stripe_server: FakeStripeServer,
) -> None:
    pi_id = paid_intent(stripe_server)
    stripe_server.hang()
    started = time.monotonic()

    err = error_of(payments_for(stripe_server, timeout=0.5), pi_id)

    assert time.monotonic() - started < 2.0
    assert err.error_class is ErrorClass.PAYMENT_TRANSIENT
    assert "timed out" in err.message.lower() or "timeout" in err.message.lower()


def test_unreachable_stripe_is_transient() -> None:
    port = free_port()  # nobody listens there
    payments = StripePayments("sk_test_" + "x" * 24, api_base=f"http://127.0.0.1:{port}")

    err = error_of(payments, "pi_Anything00000000000000")

    assert err.error_class is ErrorClass.PAYMENT_TRANSIENT
    assert "ConnectionError" in err.message


# -- bad input: BAD_INPUT, nothing sent ------------------------------------------------------------


@pytest.mark.parametrize(
    "pi_id",
    ["", "ch_3Abc", "pi_", "pi_abc/../../v1/balance", "PI_abc", "pi_abc_secret_xyz"],
)
def test_malformed_intent_id_is_bad_input_and_not_sent(
    stripe_server: FakeStripeServer, pi_id: str
) -> None:
    err = error_of(payments_for(stripe_server), pi_id)

    assert err.error_class is ErrorClass.BAD_INPUT
    assert "secret_xyz" not in err.message
    assert stripe_server.request_count() == 0


# -- secrets and the disabled default ---------------------------------------------------------------


def test_repr_masks_the_secret_key(stripe_server: FakeStripeServer) -> None:
    payments = payments_for(stripe_server)

    text = repr(payments)

    assert stripe_server.api_key not in text
    assert f"sk_test_…{stripe_server.api_key[-4:]}" in text


def test_disabled_payments_pass_every_order_as_unverified() -> None:
    payments = DisabledPayments()

    verified = payments.verify(
        order_id=ORDER_ID, payment_intent_id="", amount_cents=2999, currency="EUR"
    )

    assert payments.enabled is False
    assert verified == VerifiedPayment("", 2999, "eur", "unverified")


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "AKIA…MPLE"),
        ("sk_test_51HxYzAbCdEfGhIjKlMn1234", "sk_test_…1234"),
        ("rk_live_51HxYzAbCdEfGhIjKlMn9999", "rk_live_…9999"),
        ("whsec_5a2b9c8d7e6f5a4b3c2d1e0fwxyz", "whsec_…wxyz"),
        ("SG.aBcDeFgHiJkLmNoPqRsTuV.wXyZ0123456789abcdefghijkl", "SG.…ijkl"),
        ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJal…EKEY"),
        ("hunter2", "…"),
        ("short_but_sixteen", "…"),  # prefix + suffix would show over half of it
        ("", ""),
    ],
)
def test_mask_secret_keeps_only_kind_prefix_and_last_four(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked
