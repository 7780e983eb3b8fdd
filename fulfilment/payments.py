"""Payment verification: the `verify payment` step of order completion.

Nothing is fulfilled for a payment that is not known to be good. The step asks Stripe for the
order's PaymentIntent and accepts it only when it has `succeeded` with the order's amount, currency
and `metadata.order_id`. Failures split in two, because the pipeline treats them oppositely:

- `PAYMENT_UNVERIFIED`: Stripe answered and the answer is no (unknown intent, failed or cancelled
  payment, a mismatch). Retrying cannot change it; the order needs attention.
- `PAYMENT_TRANSIENT`: there is no answer yet (still `processing`, network, timeout, 429, 5xx), or
  the operator's key is bad. The payment may well be fine, so the order waits and asks again.

The Stripe library's own retries are off: the pipeline's retries are durable and visible.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from fulfilment.coalesce import Coalescer
from fulfilment.errors import ErrorClass, StepError
from fulfilment.secrets import mask_secret

logger = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
UNVERIFIED = "unverified"  # the status DisabledPayments reports: nobody asked Stripe

# Only `processing` may still end in `succeeded` on its own; every other non-succeeded status
# needs the customer to act again, which a new checkout (not this order's retry) will see.
_PENDING_STATUSES = frozenset({"processing"})

# Path-safe by construction: the id ends up in the request URL.
_PAYMENT_INTENT_ID = re.compile(r"pi_[A-Za-z0-9_]+")
_MAX_REASON_CHARS = 300
# However often an order's payment is asked about (a customer clicking, the worker, a retry), Stripe
# is asked at most once per this many seconds per PaymentIntent, one request at a time.
COALESCE_SECONDS = 5.0


@dataclass(frozen=True)
class VerifiedPayment:
    payment_intent_id: str
    amount_cents: int
    currency: str  # lower case, as Stripe writes it
    status: str


class Payments(Protocol):
    enabled: bool

    def verify(
        self, *, order_id: str, payment_intent_id: str, amount_cents: int, currency: str
    ) -> VerifiedPayment: ...


class StripePayments:
    """Verifies payments against the Stripe API (or a Stripe-compatible `api_base`)."""

    enabled = True

    def __init__(
        self, secret_key: str, api_base: str | None = None, timeout: float = 10.0,
        coalesce_seconds: float = COALESCE_SECONDS,
    ) -> None:
        self._secret_key = secret_key
        self._retrievals: Coalescer[dict[str, Any]] = Coalescer(coalesce_seconds)
        self._api_base = api_base
        self._timeout = timeout
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout),
        )

    @property
    def client(self) -> stripe.StripeClient:
        """The configured client, for the `stripe` check and reconciliation to share."""
        return self._client

    def __repr__(self) -> str:
        return (
            f"StripePayments(secret_key={mask_secret(self._secret_key)!r}, "
            f"api_base={self._api_base!r}, timeout={self._timeout!r})"
        )

    def verify(
        self, *, order_id: str, payment_intent_id: str, amount_cents: int, currency: str
    ) -> VerifiedPayment:
        _check_input(payment_intent_id, amount_cents, currency)
        intent = self._retrievals.call(payment_intent_id, lambda: self._retrieve(order_id, payment_intent_id))
        _check_matches(intent, order_id, amount_cents, currency)
        _check_succeeded(intent)
        logger.info(
            "order %s: payment %s verified (%s %s)",
            order_id, payment_intent_id, intent["amount"], intent["currency"],
        )
        return VerifiedPayment(payment_intent_id, intent["amount"], intent["currency"], SUCCEEDED)

    def read_account(self) -> str:
        """A read that charges nothing and needs what verification needs: one PaymentIntent of
        the account listed (healer's canary). Raises `StepError` (PAYMENT_TRANSIENT, as for a
        verification Stripe could not answer); returns what it saw."""
        try:
            listed = self._client.v1.payment_intents.list(params={"limit": 1})
        except stripe.StripeError as err:
            reason = self._scrub(_describe(err))
            if isinstance(err, (stripe.AuthenticationError, stripe.PermissionError)):
                raise StepError(
                    ErrorClass.PAYMENT_TRANSIENT,
                    f"stripe refused the API key {mask_secret(self._secret_key)} ({reason}); "
                    "check STRIPE_SECRET_KEY",
                ) from None
            raise StepError(ErrorClass.PAYMENT_TRANSIENT, f"stripe unavailable: {reason}") from None
        mode = "live" if "_live_" in self._secret_key else "test"
        return f"key {mask_secret(self._secret_key)} ({mode} mode) may read PaymentIntents ({len(listed.data)} listed)"

    def _retrieve(self, order_id: str, payment_intent_id: str) -> dict[str, Any]:
        try:
            intent = self._client.v1.payment_intents.retrieve(payment_intent_id)
        except stripe.StripeError as err:
            step_error = self._classify(payment_intent_id, err)
            # The pipeline records the failure; this line only adds it to a debug trace.
            logger.debug(
                "order %s: payment %s not verified: %s", order_id, payment_intent_id, step_error
            )
            raise step_error from None
        # StripeObject is not a dict in stripe>=12 (no .get); work on plain data.
        return intent.to_dict()

    def _classify(self, payment_intent_id: str, err: stripe.StripeError) -> StepError:
        reason = self._scrub(_describe(err))
        if _wrong_mode(err):
            # A test key against live payments (or the reverse) is the operator's fault; the
            # payment itself exists, so the order waits for the right key.
            return StepError(
                ErrorClass.PAYMENT_TRANSIENT,
                f"payment_intent {payment_intent_id} is in the other Stripe mode (test/live) "
                f"from API key {mask_secret(self._secret_key)}; check STRIPE_SECRET_KEY",
            )
        if isinstance(err, stripe.InvalidRequestError) and err.code == "resource_missing":
            return StepError(
                ErrorClass.PAYMENT_UNVERIFIED, f"payment_intent {payment_intent_id} not found"
            )
        if isinstance(err, stripe.InvalidRequestError) and not isinstance(
            err, stripe.IdempotencyError
        ):
            return StepError(ErrorClass.PAYMENT_UNVERIFIED, f"stripe rejected the lookup: {reason}")
        if isinstance(err, (stripe.AuthenticationError, stripe.PermissionError)):
            # The operator's key is wrong, not the customer's payment: wait for the fix.
            return StepError(
                ErrorClass.PAYMENT_TRANSIENT,
                f"stripe refused the API key {mask_secret(self._secret_key)} "
                f"({reason}); check STRIPE_SECRET_KEY",
            )
        return StepError(ErrorClass.PAYMENT_TRANSIENT, f"stripe unavailable: {reason}")

    def _scrub(self, text: str) -> str:
        # Stripe masks keys in its own messages; this guards against any path that does not.
        if not self._secret_key:
            return text
        return text.replace(self._secret_key, mask_secret(self._secret_key))


class DisabledPayments:
    """Verification off (no STRIPE_SECRET_KEY): every payment passes as `unverified`."""

    enabled = False

    def verify(
        self, *, order_id: str, payment_intent_id: str, amount_cents: int, currency: str
    ) -> VerifiedPayment:
        logger.debug("order %s: payment verification disabled", order_id)
        return VerifiedPayment(payment_intent_id, amount_cents, currency.lower(), UNVERIFIED)

    def __repr__(self) -> str:
        return "DisabledPayments()"


def _check_input(payment_intent_id: str, amount_cents: int, currency: str) -> None:
    if not payment_intent_id:
        raise StepError(ErrorClass.BAD_INPUT, "order has no stripe_payment_intent_id")
    if "_secret_" in payment_intent_id:
        # A client secret stored by mistake: do not send it anywhere or repeat it.
        raise StepError(ErrorClass.BAD_INPUT, "stripe_payment_intent_id holds a client secret")
    if not _PAYMENT_INTENT_ID.fullmatch(payment_intent_id):
        raise StepError(
            ErrorClass.BAD_INPUT,
            f"stripe_payment_intent_id {payment_intent_id[:40]!r} is not a PaymentIntent id "
            "(pi_...)",
        )
    if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents < 1:
        raise StepError(
            ErrorClass.BAD_INPUT, f"order amount {amount_cents!r} is not a positive number of cents"
        )
    if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
        raise StepError(ErrorClass.BAD_INPUT, f"order currency {currency!r} is not an ISO code")


def _check_matches(intent: dict[str, Any], order_id: str, amount_cents: int, currency: str) -> None:
    # A mismatch is final whatever the status: this intent is not this order's payment.
    pi = intent["id"]
    paid_for = (intent.get("metadata") or {}).get("order_id")
    if paid_for != order_id:
        raise StepError(
            ErrorClass.PAYMENT_UNVERIFIED,
            f"payment_intent {pi}: metadata.order_id {paid_for!r} != order id {order_id!r}",
        )
    if str(intent["currency"]).lower() != currency.lower():
        raise StepError(
            ErrorClass.PAYMENT_UNVERIFIED,
            f"payment_intent {pi}: currency {intent['currency']} != order currency "
            f"{currency.lower()}",
        )
    if intent["amount"] != amount_cents:
        raise StepError(
            ErrorClass.PAYMENT_UNVERIFIED,
            f"payment_intent {pi}: amount {intent['amount']} != order amount {amount_cents}",
        )


def _check_succeeded(intent: dict[str, Any]) -> None:
    status = intent["status"]
    if status == SUCCEEDED:
        return
    error_class = (
        ErrorClass.PAYMENT_TRANSIENT if status in _PENDING_STATUSES
        else ErrorClass.PAYMENT_UNVERIFIED
    )
    raise StepError(error_class, f"payment_intent {intent['id']}: status {status}, not succeeded")


def _wrong_mode(err: stripe.StripeError) -> bool:
    return isinstance(err, stripe.InvalidRequestError) and "a similar object exists in" in (
        err.user_message or ""
    )


def _describe(err: stripe.StripeError) -> str:
    """One line naming what went wrong, with Stripe's request id for a support ticket."""
    if isinstance(err, stripe.APIConnectionError):
        # The library's own text is a generic paragraph; the cause says timeout vs refused.
        cause = err.__cause__
        text = f"{type(cause).__name__}: {cause}" if cause else "network error"
    else:
        status = f"HTTP {err.http_status}" if err.http_status else type(err).__name__
        message = " ".join((err.user_message or "").split())
        text = f"{status} {message}".strip()
    if err.request_id:
        text += f" (request {err.request_id})"
    return text[:_MAX_REASON_CHARS]
