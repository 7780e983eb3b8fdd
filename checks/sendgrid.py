"""The `sendgrid` check: the API key is well formed, valid and allowed to send, and FROM_EMAIL is set.

"Allowed to send" is read from `GET /v3/scopes` (the key's own permissions, `mail.send` among them),
which sends no email. The call is a plain HTTP request rather than the `sendgrid` library's: the
library logs request headers (the key) at DEBUG, and one GET needs none of its machinery. A 401
(the key is invalid or revoked) and a 403 (the key may not do this) have different fixes, so they
are named apart. The key is only ever shown masked.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from checks.base import Check, CheckDisabled, CheckFailed, CheckWarning, Healthy, Runbook
from fulfilment.mailer import DEFAULT_API_BASE
from fulfilment.secrets import Redactor, mask_secret

# SendGrid shows a key once, as `SG.<key id>.<secret>`; a pasted fragment fails here, not at send.
_KEY_FORM = re.compile(r"SG\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
# A sender on these domains is a default no provider will send from (SendGrid answers 403).
_PLACEHOLDER_DOMAINS = ("localhost", "localdomain")
_NEW_KEY = ("create an API key with Mail Send access in SendGrid (Settings > API Keys) and set it "
            "as SENDGRID_API_KEY")


@dataclass(frozen=True, kw_only=True)
class SendGridCheck(Check):
    name: ClassVar[str] = "sendgrid"
    runbook: ClassVar[Runbook] = Runbook.EMAIL

    api_key: str | None = field(repr=False)  # None: the outbox (embedded default) is in use
    from_email: str
    api_base: str | None = None
    outbox_dir: Path | None = None
    request_timeout: float = 5.0

    def probe(self) -> Healthy:
        if self.api_key is None:
            raise CheckDisabled(
                f"outbox: SENDGRID_API_KEY unset, emails are written as .eml files to {self.outbox_dir}",
                "set SENDGRID_API_KEY and FROM_EMAIL to send real email",
            )
        key = mask_secret(self.api_key)
        if not _KEY_FORM.fullmatch(self.api_key):
            raise CheckFailed(
                f"malformed key: {key} is not of the form SG.<id>.<secret>",
                f"SENDGRID_API_KEY looks truncated or pasted wrong: {_NEW_KEY}",
            )
        scopes = self._scopes(key)
        if "mail.send" not in scopes:
            raise CheckFailed(
                f"not allowed to send: key {key} lacks the mail.send scope (mail/send answers 403)",
                f"give the key Mail Send access, or {_NEW_KEY}",
            )
        self._require_sender()
        return Healthy(f"key {key} valid and allowed to send (mail.send); from {self.from_email}")

    def _require_sender(self) -> None:
        domain = self.from_email.rpartition("@")[2].lower()
        if not domain or domain.split(".")[-1] in _PLACEHOLDER_DOMAINS:
            raise CheckFailed(
                f"FROM_EMAIL not set: sending as {self.from_email or '(nothing)'}",
                "set FROM_EMAIL to an address of a sender identity verified in SendGrid",
            )

    def _scopes(self, key: str) -> list[str]:
        request = urllib.request.Request(
            f"{self._base()}/v3/scopes",
            headers={"Authorization": f"Bearer {self.api_key}", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
                body = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise self._refused(error.code, _error_detail(error.read()), key) from None
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from None
        except ValueError:
            raise CheckFailed(f"unexpected answer from {self._base()}/v3/scopes: not JSON",
                              "check SENDGRID_API_BASE") from None
        scopes = body.get("scopes") if isinstance(body, dict) else None
        return [str(s) for s in scopes] if isinstance(scopes, list) else []

    def _refused(self, status: int, detail: str, key: str) -> CheckFailed | CheckWarning:
        said = f"{status}: {self._scrub(detail)}"
        if status == 401:
            return CheckFailed(f"invalid key: {key} is invalid, expired or revoked ({said})", _NEW_KEY)
        if status == 403:
            return CheckFailed(f"forbidden: key {key} may not read its scopes ({said})",
                               f"give the key Mail Send access, or {_NEW_KEY}")
        if status == 404:
            return CheckFailed(f"no SendGrid API at {self._base()} ({said})",
                               "check SENDGRID_API_BASE (unset for SendGrid itself)")
        if status == 429:
            return CheckWarning(f"rate limited ({said})",
                                "SendGrid is throttling this account: emails are retried with backoff")
        return CheckFailed(f"SendGrid unavailable ({said})",
                           "usually transient: emails are retried with backoff; check status.sendgrid.com")

    def _unreachable(self, error: BaseException) -> CheckFailed:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            return CheckFailed(
                f"not answering: {self._base()} gave no answer within {self.request_timeout:g}s",
                "check the network path to SendGrid (proxy, firewall) and SENDGRID_API_BASE")
        return CheckFailed(
            f"unreachable: {self._base()}: {self._scrub(str(reason))}",
            "check SENDGRID_API_BASE (unset for SendGrid itself) and the network, DNS and proxy path")

    def _base(self) -> str:
        return (self.api_base or DEFAULT_API_BASE).rstrip("/").removesuffix("/v3")

    def _scrub(self, text: str) -> str:
        return Redactor([self.api_key] if self.api_key else [])(text)


def _error_detail(body: bytes) -> str:
    """SendGrid's `errors[].message`, joined; the raw start of the body if it is not that."""
    try:
        payload: Any = json.loads(body or b"{}")
        messages = [str(e.get("message")) for e in payload["errors"] if isinstance(e, dict)]
    except (ValueError, TypeError, KeyError, AttributeError):
        messages = []
    text = "; ".join(m for m in messages if m) or body[:120].decode("utf-8", "replace")
    return " ".join(text.split())[:300] or "no details"
