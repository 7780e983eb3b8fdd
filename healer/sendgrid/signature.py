"""Whether a batch of events is SendGrid's, and recent: its Signed Event Webhook signs the timestamp
header followed by the raw body with ECDSA P-256 (SHA-256), and SendGrid's Mail Settings show the
verification key as base64 DER, which is what SENDGRID_WEBHOOK_PUBLIC_KEY holds.

The signature is checked on the raw bytes by the `sendgrid` library's own helper, before anything
is parsed. A batch captured and posted again later is refused by its timestamp's age; one posted
again within the tolerance is recognised by the event ids it carries (healer.sendgrid.delivery).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

SIGNATURE_HEADER: str = EventWebhookHeader.SIGNATURE
TIMESTAMP_HEADER: str = EventWebhookHeader.TIMESTAMP
# SendGrid documents no tolerance; five minutes is Stripe's, and ample for a request in flight.
TOLERANCE_SECONDS = 300
# A timestamp ahead of our clock by more than the skew between two NTP-synchronised clocks was not
# made by SendGrid just now.
FUTURE_SECONDS = 60
# A DER ECDSA P-256 signature is at most 72 bytes: 96 characters of base64.
_MAX_SIGNATURE_CHARS = 128


class NotVerified(Exception):
    """The batch is not shown to be SendGrid's, made just now: why, in one line (no secret in it)."""


def public_key_text(value: str) -> str:
    """SENDGRID_WEBHOOK_PUBLIC_KEY as SendGrid's helper takes it: the base64 DER of a P-256 public
    key, whitespace (and PEM armour, should it be pasted with it) removed. Raises ValueError."""
    lines = [line for line in value.strip().splitlines() if not line.strip().startswith("-----")]
    text = "".join("".join(lines).split())
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("it is not base64") from None
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("it is not a public key (base64 DER)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("it is not an ECDSA P-256 key, which SendGrid signs with")
    return base64.b64encode(der).decode("ascii")


@dataclass(frozen=True)
class Verifier:
    """Verifies batches with one verification key (`public_key_text`'s form)."""

    public_key: str = field(repr=False)
    tolerance_seconds: float = TOLERANCE_SECONDS
    clock: Callable[[], float] = time.time

    @cached_property
    def _helper(self) -> EventWebhook:
        return EventWebhook(self.public_key)

    def verify(self, body: bytes, signature: str | None, timestamp: str | None) -> None:
        """Returns if SendGrid signed `timestamp` + `body` recently; raises NotVerified."""
        if not signature or not timestamp:
            raise NotVerified(f"{SIGNATURE_HEADER} or {TIMESTAMP_HEADER} missing")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise NotVerified(f"{TIMESTAMP_HEADER} is not a Unix time in seconds")
        if not (signature.isascii() and len(signature) <= _MAX_SIGNATURE_CHARS):
            raise NotVerified(f"{SIGNATURE_HEADER} is not a base64 signature")
        try:
            payload = body.decode("utf-8")  # the helper signs text: SendGrid's JSON is UTF-8
        except UnicodeDecodeError:
            raise NotVerified("the body is not UTF-8, so not what SendGrid signed") from None
        try:
            valid = bool(self._helper.verify_signature(payload, signature, timestamp))
        except (ValueError, TypeError):  # not base64, or not a DER-encoded signature
            valid = False
        if not valid:
            raise NotVerified("the signature does not verify with SENDGRID_WEBHOOK_PUBLIC_KEY")
        age = self.clock() - int(timestamp)
        if age > self.tolerance_seconds:
            raise NotVerified(f"signed {age:.0f} s ago, over the {self.tolerance_seconds:g} s tolerance (a replay?)")
        if age < -FUTURE_SECONDS:
            raise NotVerified(f"signed {-age:.0f} s in the future: check this host's clock")
