"""Pins the fake Stripe API's wire behaviour, as the real `stripe` library sees it."""

from __future__ import annotations

import pytest
import stripe

from tests.fakes.stripe_server import FakeStripeServer, WebhookSignature


@pytest.fixture
def client(stripe_server: FakeStripeServer) -> stripe.StripeClient:
    return stripe.StripeClient(
        stripe_server.api_key,
        base_addresses={"api": stripe_server.url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=5),
    )


def make_intents(server: FakeStripeServer, count: int, first_created: int = 1_700_000_000) -> list[str]:
    """Intents created one second apart; returned oldest first."""
    return [
        server.create_payment_intent(100 + i, "eur", {"order_id": f"o{i}"}, created=first_created + i)["id"]
        for i in range(count)
    ]


def test_list_pages_newest_first_with_starting_after(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    ids = make_intents(stripe_server, 25)

    first = client.v1.payment_intents.list(params={"limit": 10})
    second = client.v1.payment_intents.list(
        params={"limit": 10, "starting_after": first.data[-1].id}
    )

    assert [pi.id for pi in first.data] == ids[::-1][:10]
    assert [pi.id for pi in second.data] == ids[::-1][10:20]
    assert first.has_more and second.has_more and first.url == "/v1/payment_intents"
    assert [pi.id for pi in first.auto_paging_iter()] == ids[::-1]
    assert stripe_server.request_count("/v1/payment_intents") == 2 + 2


def test_list_pages_back_with_ending_before(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    ids = make_intents(stripe_server, 5)

    page = client.v1.payment_intents.list(params={"limit": 2, "ending_before": ids[1]})

    assert [pi.id for pi in page.data] == [ids[3], ids[2]]
    assert page.has_more


def test_list_filters_on_created_range(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    ids = make_intents(stripe_server, 10, first_created=1000)

    page = client.v1.payment_intents.list(params={"created": {"gte": 1003, "lt": 1006}})

    assert [pi.id for pi in page.data] == [ids[5], ids[4], ids[3]]
    assert not page.has_more
    assert stripe_server.requests[-1].params["created"] == {"gte": "1003", "lt": "1006"}


def test_list_limit_is_capped_at_100(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.list(params={"limit": 101})

    assert caught.value.http_status == 400
    assert caught.value.error is not None and caught.value.error.param == "limit"


def test_unknown_intent_is_a_404_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.retrieve("pi_Missing")

    assert caught.value.http_status == 404
    assert caught.value.code == "resource_missing"
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_created_intent_round_trips_metadata(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    created = client.v1.payment_intents.create(
        params={"amount": 2999, "currency": "EUR", "metadata": {"order_id": "o-1"},
                "confirm": True, "payment_method": "pm_card_visa"}
    )

    fetched = client.v1.payment_intents.retrieve(created.id)

    assert fetched.status == "succeeded" and fetched.currency == "eur"
    assert fetched.metadata.to_dict() == {"order_id": "o-1"}
    assert stripe_server.requests[0].params["metadata"] == {"order_id": "o-1"}


def test_unknown_parameter_is_rejected(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: meta_data"):
        client.v1.payment_intents.create(
            params={"amount": 1, "currency": "eur", "meta_data": {"a": "b"}}  # type: ignore[typeddict-unknown-key]
        )


def test_refund_with_same_idempotency_key_refunds_once(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    pi = stripe_server.create_payment_intent(2999, "eur", {"order_id": "o-1"})
    options: stripe.RequestOptions = {"idempotency_key": "refund-o-1"}

    first = client.v1.refunds.create(params={"payment_intent": pi["id"]}, options=options)
    again = client.v1.refunds.create(params={"payment_intent": pi["id"]}, options=options)

    assert again.id == first.id and first.amount == 2999
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert len(stripe_server.refunds(pi["id"])) == 1
    charge = stripe_server.charge(pi["id"])
    assert charge["refunded"] is True and charge["amount_refunded"] == 2999
    assert [e["type"] for e in stripe_server.events("charge.refunded")] == ["charge.refunded"]


def test_omitted_fields_are_left_out_of_the_answer_but_the_refund_is_made(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    pi = stripe_server.create_payment_intent(2999, "eur")
    stripe_server.omit_fields("/v1/refunds", "amount", "currency", "status")

    refund = client.v1.refunds.create(params={"payment_intent": pi["id"]})

    assert refund.id.startswith("re_") and "amount" not in refund and "status" not in refund
    with pytest.raises(AttributeError):
        refund.amount  # noqa: B018 (what a caller reading it as always there meets)
    assert stripe_server.refunds(pi["id"])[0]["amount"] == 2999
    assert stripe_server.charge(pi["id"])["refunded"] is True


def test_reusing_an_idempotency_key_with_other_params_fails(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    pi = stripe_server.create_payment_intent(2999, "eur")
    options: stripe.RequestOptions = {"idempotency_key": "k"}
    client.v1.refunds.create(params={"payment_intent": pi["id"], "amount": 100}, options=options)

    with pytest.raises(stripe.IdempotencyError):
        client.v1.refunds.create(params={"payment_intent": pi["id"], "amount": 200}, options=options)


def test_second_full_refund_is_refused(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    pi = stripe_server.create_payment_intent(2999, "eur")
    client.v1.refunds.create(params={"payment_intent": pi["id"]})

    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create(params={"payment_intent": pi["id"]})

    assert caught.value.code == "charge_already_refunded"


def test_events_filter_on_type_and_created(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    old = stripe_server.create_payment_intent(100, "eur", created=1000)
    new = stripe_server.create_payment_intent(200, "eur", created=2000)
    stripe_server.set_status(new["id"], "canceled")  # not a success: filtered out below

    page = client.v1.events.list(
        params={"type": "payment_intent.succeeded", "created": {"gte": 1500}}
    )
    everything = client.v1.events.list(params={"type": "payment_intent.*"})

    assert [e.data.object.id for e in page.data] == [new["id"]]
    assert {e.data.object.id for e in everything.data} == {old["id"], new["id"]}
    assert everything.data[0].type == "payment_intent.canceled"


def test_unknown_key_is_401_and_restricted_key_is_403(stripe_server: FakeStripeServer) -> None:
    def balance(key: str) -> None:
        stripe.StripeClient(key, base_addresses={"api": stripe_server.url}).v1.balance.retrieve()

    with pytest.raises(stripe.AuthenticationError) as unknown:
        balance("sk_test_NotAKeyTheServerKnows1234")
    with pytest.raises(stripe.PermissionError):
        balance(stripe_server.restricted_key)

    assert "sk_test_NotAKeyTheServerKnows1234" not in str(unknown.value)


def test_injected_429_carries_retry_headers_then_clears(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    stripe_server.fail_next(status=429, count=1)

    with pytest.raises(stripe.RateLimitError) as caught:
        client.v1.balance.retrieve()

    headers = caught.value.headers or {}
    assert headers["Retry-After"] == "1" and headers["Stripe-Should-Retry"] == "true"
    assert client.v1.balance.retrieve().object == "balance"


def test_hang_never_answers_until_reset(
    stripe_server: FakeStripeServer, client: stripe.StripeClient
) -> None:
    stripe_server.hang()
    hasty = stripe.StripeClient(
        stripe_server.api_key, base_addresses={"api": stripe_server.url},
        max_network_retries=0, http_client=stripe.RequestsClient(timeout=0.3),
    )

    with pytest.raises(stripe.APIConnectionError):
        hasty.v1.balance.retrieve()
    stripe_server.reset()

    assert client.v1.balance.retrieve().object == "balance"


def test_signed_webhook_verifies_with_the_library(stripe_server: FakeStripeServer) -> None:
    pi = stripe_server.create_payment_intent(2999, "eur", {"order_id": "o-1"})

    body, headers = stripe_server.webhook_payload("payment_intent.succeeded", pi)
    event = stripe.Webhook.construct_event(
        body, headers["Stripe-Signature"], stripe_server.webhook_secret
    )

    assert event.type == "payment_intent.succeeded"
    assert event.data.object.id == pi["id"]


@pytest.mark.parametrize("signature", [WebhookSignature.FORGED, WebhookSignature.STALE])
def test_forged_or_stale_webhook_fails_verification(
    stripe_server: FakeStripeServer, signature: WebhookSignature
) -> None:
    pi = stripe_server.create_payment_intent(2999, "eur")
    body, headers = stripe_server.webhook_payload("payment_intent.succeeded", pi, signature=signature)

    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["Stripe-Signature"], stripe_server.webhook_secret)


def test_recorded_event_can_be_delivered_as_a_webhook(stripe_server: FakeStripeServer) -> None:
    stripe_server.create_payment_intent(2999, "eur")
    recorded = stripe_server.events("payment_intent.succeeded")[0]

    body, headers = stripe_server.webhook_for(recorded)
    event = stripe.Webhook.construct_event(
        body, headers["Stripe-Signature"], stripe_server.webhook_secret
    )

    assert event.id == recorded["id"]
