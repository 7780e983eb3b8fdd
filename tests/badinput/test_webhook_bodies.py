"""`POST /stripe/webhook` of a running daemon, fed bodies of every shape.

What tests/healer/test_webhooks.py pins (forged, stale and unsigned deliveries, a body that is not
an event, an event lacking fields, a 413 by Content-Length, mismatched amounts, replays) is not
repeated here. This adds, over real HTTP:
- any bytes under any signature header but a valid one: 400, nothing stored or changed;
- validly signed events of any shape (what a leaked secret or a Stripe API change could bring):
  never a 5xx, which Stripe would redeliver for three days; a refusal stores nothing;
- a body over the limit sent without Content-Length (chunked) is cut off at the limit: 413.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.badinput.helpers import Seeded, post, signed, snapshot
from tests.e2e.daemon import RunningDaemon
from tests.fakes.shop_fixtures import Shop

pytestmark = pytest.mark.timeout(240)
SETTINGS = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))
WEBHOOK = "/stripe/webhook"
HANDLED = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@given(
    body=st.binary(max_size=2048) | json_values.map(lambda v: json.dumps(v).encode()),
    signature=st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
    | st.builds(lambda t, v: f"t={t},v1={v}", st.integers(), st.text("0123456789abcdef", min_size=64, max_size=64)),
)
@SETTINGS
def _unsigned(daemon: RunningDaemon, shop: Shop, body: bytes, signature: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    before = snapshot(shop.sessions)
    assert post(daemon, WEBHOOK, body, headers) == 400
    assert snapshot(shop.sessions) == before


def test_any_body_without_a_valid_signature_is_400_and_changes_nothing(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    _unsigned(daemon, shop)  # type: ignore[call-arg]


def _event_strategy(seeded: Seeded, shop: Shop) -> st.SearchStrategy[dict[str, Any]]:
    """Events of many shapes around the unpaid order. The four shapes that
    `test_signed_but_malformed_events_are_400_and_store_nothing` pins (a huge `created`, an id that
    is not a string, metadata that is not an object, deep nesting) are left out, so that this test
    reports new findings rather than those again."""
    real = shop.order(seeded.unpaid)
    text = st.text(max_size=20)
    objects = st.fixed_dictionaries(
        {},
        optional={
            "id": st.sampled_from([real.stripe_payment_intent_id, "pi_unknown"]) | text,
            # Never the order's own amount: an applied success would set the worker going, and its
            # later steps would land in the snapshot of some unrelated refused request.
            "amount": json_values.filter(lambda v: v != real.amount_cents),
            "amount_refunded": json_values,
            "currency": st.sampled_from(["eur", "EUR"]) | json_values,
            "metadata": st.none() | st.dictionaries(text, json_values, max_size=3)
            | st.fixed_dictionaries({"order_id": st.sampled_from([str(seeded.unpaid)]) | json_values}),
            "payment_intent": st.sampled_from([real.stripe_payment_intent_id]) | text | st.none(),
            "refunded": st.booleans() | json_values,
            "last_payment_error": json_values,
        },
    )
    # Half of them as Stripe shapes the envelope (so the objects are what gets judged), half anything.
    plausible = st.fixed_dictionaries(
        {"id": st.from_regex(r"evt_[A-Za-z0-9]{1,24}", fullmatch=True),
         "type": st.sampled_from((*HANDLED, "payment_intent.created", "charge.succeeded")),
         "created": st.integers(0, 2**32),
         "data": st.fixed_dictionaries({"object": objects})},
    )
    anything = st.fixed_dictionaries(
        {"id": text.map(lambda t: f"evt_{t}") | text,
         "type": st.sampled_from(HANDLED) | text,
         "created": st.integers(0, 2**32) | text | st.none() | st.lists(json_values, max_size=2),
         "data": st.fixed_dictionaries({"object": objects}) | json_values},
    )
    return plausible | anything


def test_signed_events_of_any_shape_never_get_a_5xx_and_a_refusal_stores_nothing(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    secret = shop.stripe.webhook_secret
    answers: dict[int, int] = {}

    @given(event=_event_strategy(seeded, shop))
    @SETTINGS
    def deliver(event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        before = snapshot(shop.sessions)
        status = post(daemon, WEBHOOK, body, signed(body, secret))
        answers[status] = answers.get(status, 0) + 1
        assert status < 500, (status, body[:300])
        if status >= 400:
            assert snapshot(shop.sessions) == before, body[:300]

    deliver()
    assert 400 in answers and 200 in answers, answers


def _event(obj: object, created: object = 1) -> bytes:
    return json.dumps({"id": "evt_malformed", "type": "payment_intent.succeeded", "created": created,
                       "data": {"object": obj}}).encode()


MALFORMED = {
    # A timestamp past what the platform's time_t holds.
    "created-out-of-range": _event({}, created=10**20),
    # The PaymentIntent id must be a string; the database must not be asked to compare anything else.
    "payment-id-not-a-string": _event({"id": 42, "amount": 4900, "currency": "eur"}),
    # metadata is an object in Stripe's API; here a list.
    "metadata-not-an-object": _event({"id": "pi_x", "amount": 4900, "currency": "eur", "metadata": ["x"]}),
    # Valid JSON that Python's parser cannot follow to the bottom.
    "nested-too-deep": b'{"id": "evt_deep", "type": "payment_intent.succeeded", "created": 1, "data": '
    + b"[" * 50_000 + b"]" * 50_000 + b"}",
}


def test_signed_but_malformed_events_are_400_and_store_nothing(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    before = snapshot(shop.sessions)

    answers = {name: post(daemon, WEBHOOK, body, signed(body, shop.stripe.webhook_secret)) for name, body in MALFORMED.items()}

    assert answers == dict.fromkeys(MALFORMED, 400)
    assert snapshot(shop.sessions) == before


def test_a_body_over_the_limit_without_content_length_is_cut_off_with_413(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    parts = urlsplit(daemon.base_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    before = snapshot(shop.sessions)
    chunk = b"x" * 65536
    try:
        # encode_chunked: no Content-Length at all, so only the streamed byte count can stop it.
        connection.request("POST", "/stripe/webhook", body=iter([chunk] * 8), encode_chunked=True,
                           headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                                    "Stripe-Signature": "t=1,v1=00"})
        status = connection.getresponse().status
    finally:
        connection.close()

    assert status == 413
    assert snapshot(shop.sessions) == before
