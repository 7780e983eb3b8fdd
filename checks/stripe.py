"""The `stripe` check: the secret key works, the webhook signing secret is configured, and Stripe
has an enabled webhook endpoint that posts the events healer handles to healer's webhook URL.

The probe is the cheapest authenticated read that needs the permission payment verification
needs: listing one PaymentIntent. (GET /v1/balance would be as cheap, but a restricted key that
holds exactly what healer needs may not read the balance, and would be reported broken.) The
library's network retries are off, so a probe reports what Stripe did. Keys only appear masked.

Then it lists the account's webhook endpoints. One missing, disabled or without an event type is
a warning, not a failure: payments are still verified, and reconciliation finds paid orders late.
So is not being able to list them once the key has proved to work (a restricted key without
Webhook Endpoints: Read, say): the check cannot tell, and says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar
from urllib.parse import urlsplit

import stripe

from checks.base import Check, CheckDisabled, CheckFailed, CheckWarning, Healthy, Runbook
from fulfilment.secrets import Redactor, mask_secret

_DASHBOARD_KEY = "copy the current secret key from the Stripe dashboard (Developers > API keys) into STRIPE_SECRET_KEY"
_DASHBOARD_WEBHOOKS = "the Stripe dashboard (Developers > Webhooks)"


@dataclass(frozen=True, kw_only=True)
class StripeCheck(Check):
    name: ClassVar[str] = "stripe"
    runbook: ClassVar[Runbook] = Runbook.NONE

    api_key: str | None = field(repr=False)  # None: payment verification is off
    webhook_secret: str | None = field(default=None, repr=False)
    # Where Stripe must post ({PUBLIC_BASE_URL}/stripe/webhook) and which event types; None: not read.
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()
    api_base: str | None = None
    request_timeout: float = 5.0

    @cached_property
    def _client(self) -> stripe.StripeClient:
        # Built once and kept, so probes reuse the connection.
        return stripe.StripeClient(
            self.api_key or "",
            base_addresses={"api": self.api_base} if self.api_base else None,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=self.request_timeout),
        )

    def probe(self) -> Healthy:
        if self.api_key is None:
            raise CheckDisabled(
                "payment verification off: STRIPE_SECRET_KEY unset, payments are not checked",
                "set STRIPE_SECRET_KEY (and STRIPE_WEBHOOK_SECRET) to verify payments before fulfilment",
            )
        key = mask_secret(self.api_key)
        self._read(key)
        where = f"key {key} valid ({'live' if '_live_' in self.api_key else 'test'} mode)"
        self._require_webhook_secret(where)
        endpoint = self._require_webhook_endpoint(where)
        return Healthy(f"{where}, may read PaymentIntents; webhook secret set{endpoint}")

    def _read(self, key: str) -> None:
        try:
            self._client.v1.payment_intents.list(params={"limit": 1})
        except stripe.AuthenticationError as error:
            raise CheckFailed(f"key rejected: {key} ({self._said(error)})", _DASHBOARD_KEY) from None
        except stripe.PermissionError as error:
            raise CheckFailed(
                f"not permitted: key {key} may not read PaymentIntents ({self._said(error)})",
                "give the restricted key PaymentIntents: Read (and Events: Read for "
                f"reconciliation), or {_DASHBOARD_KEY}",
            ) from None
        except stripe.RateLimitError as error:
            raise CheckWarning(f"rate limited ({self._said(error)})",
                               "Stripe is throttling this account: verification is retried later") from None
        except stripe.APIConnectionError as error:
            raise CheckFailed(
                f"unreachable: {self.api_base or 'api.stripe.com'} ({self._said(error)})",
                "check STRIPE_API_BASE (unset for Stripe itself) and the network, DNS and proxy path",
            ) from None
        except stripe.StripeError as error:
            raise CheckFailed(f"Stripe unavailable ({self._said(error)})",
                              "usually transient: verification is retried; check status.stripe.com") from None

    def _require_webhook_secret(self, where: str) -> None:
        if self.webhook_secret is None:
            raise CheckWarning(
                f"webhook secret not set: {where}, but STRIPE_WEBHOOK_SECRET is unset, so "
                "webhook events are refused",
                "set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_...) from the Stripe "
                "dashboard (Developers > Webhooks); until then paid orders are found by reconciliation only",
            )
        if not self.webhook_secret.startswith("whsec_"):
            raise CheckWarning(
                f"webhook secret malformed: {where}, but STRIPE_WEBHOOK_SECRET "
                f"({mask_secret(self.webhook_secret)}) does not start with whsec_",
                "set STRIPE_WEBHOOK_SECRET to the endpoint's signing secret (whsec_...), not an API key",
            )

    def _require_webhook_endpoint(self, where: str) -> str:
        """"; endpoint URL enabled for the N events" once one is, else a warning saying what to fix."""
        if self.webhook_url is None:
            return ""
        url, wanted = self.webhook_url, ", ".join(self.webhook_events)
        add = (f"add an endpoint for {url} in {_DASHBOARD_WEBHOOKS} with the events {wanted}, and set "
               "STRIPE_WEBHOOK_SECRET to its signing secret")
        try:
            listed = self._client.v1.webhook_endpoints.list(params={"limit": 100})  # an account has at most 16
        except stripe.PermissionError as error:
            raise CheckWarning(
                f"webhook endpoints not readable: {where}, but it may not list webhook endpoints ({self._said(error)})",
                f"give the restricted key Webhook Endpoints: Read, so that this check can see that Stripe posts to {url}",
            ) from None
        except stripe.StripeError as error:
            raise CheckWarning(f"webhook endpoints not read: {where}, but listing them failed ({self._said(error)})",
                               "usually transient: the check reads them again on its next run") from None
        endpoints = _field(listed, "data") or []
        ours = [e for e in endpoints if _same_url(_field(e, "url"), url)]
        enabled = [e for e in ours if _field(e, "status") == "enabled"]
        if not ours:
            elsewhere = sorted({str(_field(e, "url")) for e in endpoints})
            posts = f"Stripe posts only to {', '.join(elsewhere)}" if elsewhere else "the account has none"
            raise CheckWarning(f"no webhook endpoint for {url} ({posts}): paid orders are found by "
                               "reconciliation only", add)
        if not enabled:
            raise CheckWarning(f"webhook endpoint for {url} is disabled: Stripe posts it no events",
                               f"enable it in {_DASHBOARD_WEBHOOKS}")
        missing = min((_missing(_field(e, "enabled_events"), self.webhook_events) for e in enabled), key=len)
        if missing:
            raise CheckWarning(
                f"webhook endpoint for {url} is not sent {', '.join(missing)}: those events never reach healer",
                f"add {', '.join(missing)} to the endpoint's events in {_DASHBOARD_WEBHOOKS}")
        return f"; endpoint {url} enabled for {len(self.webhook_events)} event types"

    def _said(self, error: stripe.StripeError) -> str:
        """Stripe's own words (it masks keys itself; scrubbed again all the same)."""
        if isinstance(error, stripe.APIConnectionError) and error.__cause__ is not None:
            text = f"{type(error.__cause__).__name__}: {error.__cause__}"
        else:
            status = f"HTTP {error.http_status}" if error.http_status else type(error).__name__
            text = f"{status} {' '.join((error.user_message or '').split())}".strip()
        return Redactor([s for s in (self.api_key, self.webhook_secret) if s])(text)[:300]


def _field(endpoint: Any, name: str) -> Any:
    """A field of a listed endpoint, None if Stripe left it out."""
    try:
        return endpoint[name]  # a StripeObject: subscriptable, but no dict (no `.get`)
    except (KeyError, TypeError):
        return None


def _same_url(listed: Any, expected: str) -> bool:
    """Stripe keeps the URL as it was entered: scheme and host compare without case, a trailing
    slash is no difference."""
    if not isinstance(listed, str):
        return False

    def normal(url: str) -> tuple[str, str, str, str]:
        parts = urlsplit(url.strip())
        return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query

    return normal(listed) == normal(expected)


def _missing(enabled: Any, wanted: Iterable[str]) -> list[str]:
    """The wanted event types an endpoint is not sent (`*` is every type)."""
    events = set(enabled) if isinstance(enabled, list) else set()
    return [] if "*" in events else [event for event in wanted if event not in events]
