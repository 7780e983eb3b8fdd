"""The `stripe` check: the secret key works, and the webhook signing secret is configured.

The probe is the cheapest authenticated read that needs the permission payment verification
needs: listing one PaymentIntent. (GET /v1/balance would be as cheap, but a restricted key that
holds exactly what healer needs may not read the balance, and would be reported broken.) The
library's network retries are off, so a probe reports what Stripe did. Keys only appear masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import stripe

from checks.base import Check, CheckDisabled, CheckFailed, CheckWarning, Healthy, Runbook
from fulfilment.secrets import Redactor, mask_secret

_DASHBOARD_KEY = "copy the current secret key from the Stripe dashboard (Developers > API keys) into STRIPE_SECRET_KEY"


@dataclass(frozen=True, kw_only=True)
class StripeCheck(Check):
    name: ClassVar[str] = "stripe"
    runbook: ClassVar[Runbook] = Runbook.NONE

    api_key: str | None = field(repr=False)  # None: payment verification is off
    webhook_secret: str | None = field(default=None, repr=False)
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
        return Healthy(f"{where}, may read PaymentIntents; webhook secret set")

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

    def _said(self, error: stripe.StripeError) -> str:
        """Stripe's own words (it masks keys itself; scrubbed again all the same)."""
        if isinstance(error, stripe.APIConnectionError) and error.__cause__ is not None:
            text = f"{type(error.__cause__).__name__}: {error.__cause__}"
        else:
            status = f"HTTP {error.http_status}" if error.http_status else type(error).__name__
            text = f"{status} {' '.join((error.user_message or '').split())}".strip()
        return Redactor([s for s in (self.api_key, self.webhook_secret) if s])(text)[:300]
