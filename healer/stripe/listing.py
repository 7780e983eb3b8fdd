"""Stripe's PaymentIntents as reconciliation reads them, retried through rate limits and outages.

PaymentIntents are listed newest first with the list API (a `created` filter, `starting_after`
pages; not search, which is eventually consistent) or retrieved one by one. Stripe rate limits
(429), 5xx and network errors are retried with exponential backoff and jitter, honouring
Retry-After; every request, retried or not, is counted on the run's tally.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import stripe

from healer.stripe.findings import Tally

if TYPE_CHECKING:
    from stripe.params import PaymentIntentListParams

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently a failed request is tried again (ReconcileConfig's numbers)."""

    max_retries: int
    base_seconds: float
    max_seconds: float

    def delay(self, attempt: int, error: stripe.StripeError) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** (attempt - 1))
        return max(_retry_after(error), ceiling / 2 + random.random() * ceiling / 2)


class PaymentIntents:
    """Reads PaymentIntents through one Stripe client; `sleep` is injected so tests do not wait."""

    def __init__(self, client: stripe.StripeClient, backoff: Backoff, *, page_size: int,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.backoff = backoff
        self.page_size = page_size
        self.sleep = sleep

    def pages(self, window_start: datetime, tally: Tally) -> Iterator[list[dict[str, Any]]]:
        """Every PaymentIntent created since `window_start`, newest first, one page at a time."""
        params: PaymentIntentListParams = {"created": {"gte": int(window_start.timestamp())},
                                           "limit": self.page_size}
        while True:
            page = self.call(tally, lambda: self.client.v1.payment_intents.list(params=params))
            intents = [intent.to_dict() for intent in page.data]
            yield intents
            if not page.has_more or not intents:
                return
            params["starting_after"] = intents[-1]["id"]

    def retrieve(self, tally: Tally, payment_intent_id: str) -> dict[str, Any] | None:
        """One PaymentIntent; None when Stripe knows no such id."""
        try:
            intent = self.call(tally, lambda: self.client.v1.payment_intents.retrieve(payment_intent_id))
        except stripe.InvalidRequestError as error:
            # Unknown or malformed id: the worker's verify step records that on the order.
            log.info("Payment %s not checked: %s", payment_intent_id, error.user_message)
            return None
        return intent.to_dict()

    def call(self, tally: Tally, request: Callable[[], T]) -> T:
        """`request()`, retried with exponential backoff and jitter on 429, 5xx and network errors."""
        attempt = 0
        while True:
            attempt += 1
            tally.stripe_requests += 1
            try:
                return request()
            except stripe.StripeError as error:
                if not _retryable(error) or attempt > self.backoff.max_retries:
                    raise
                delay = self.backoff.delay(attempt, error)
                log.warning("Stripe answered %s during reconciliation (attempt %d): retrying in %.1fs",
                            error.http_status or type(error).__name__, attempt, delay)
                self.sleep(delay)


def covered(intents: list[dict[str, Any]], window_start: datetime, now: datetime) -> float:
    """How far back (newest first) the listing has got, as a share of the window."""
    if not intents:
        return 1.0
    span = (now - window_start).total_seconds() or 1.0
    return min(1.0, max(0.0, (now.timestamp() - int(intents[-1]["created"])) / span))


def _retryable(error: stripe.StripeError) -> bool:
    if isinstance(error, (stripe.RateLimitError, stripe.APIConnectionError)):
        return True
    return isinstance(error, stripe.APIError) or (error.http_status or 0) >= 500


def _retry_after(error: stripe.StripeError) -> float:
    headers = error.headers or {}
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return min(float(value), 60.0) if value is not None else 0.0
    except ValueError:
        return 0.0
