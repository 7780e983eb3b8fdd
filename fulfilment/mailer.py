"""Sending the download email: through SendGrid, or into an outbox directory of `.eml` files.

Both mailers raise `StepError` for every failure, classified so the pipeline knows whether to wait
for the `sendgrid` check (auth), give up on this message (rejected) or back off and retry
(transient). The API key never leaves this module unmasked: not in messages, logs or reprs.
An email that names its order and kind carries them to SendGrid as custom arguments, which come
back in every event SendGrid's event webhook reports about it (delivered, bounced, ...).
"""

from __future__ import annotations

import enum
import errno
import html
import http.client
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Protocol

from python_http_client.exceptions import HTTPError as SendGridHTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    CustomArg,
    From,
    HtmlContent,
    Mail,
    MailSettings,
    PlainTextContent,
    SandBoxMode,
    Subject,
    To,
)
from sendgrid.helpers.mail.exceptions import SendGridException

from fulfilment.errors import ErrorClass, StepError
from fulfilment.secrets import mask_secret
from fulfilment.storage import write_atomically

logger = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.sendgrid.com"

# C0/C1 controls plus Unicode line and paragraph separators: anything that could break a header
# line or a text layout. Replaced by a space so words on either side stay apart.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SPACES = re.compile(r"\s+")
_LOCAL_PART = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}$")
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"([A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})$"
)
_DETAIL_LIMIT = 300


class EmailKind(enum.StrEnum):
    """What an email to a customer is, as its delivery events name it."""

    DOWNLOAD = "download"
    DELAY_NOTICE = "delay_notice"
    REFUND_NOTICE = "refund_notice"


# SendGrid's custom arguments come back as top-level fields of every event about the message, so
# they say which order and which email an event is about. Prefixed, because the shop's own emails
# share the account and its event webhook. Never personal data: SendGrid keeps them for good.
ORDER_ARG = "healer_order_id"
KIND_ARG = "healer_email"


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    text: str
    html: str
    # The order and kind the provider's delivery events will name; None: events are not matched.
    order_id: str | None = None
    kind: EmailKind | None = None

    def tracking(self) -> dict[str, str]:
        """The custom arguments that bring this email's delivery events back to its order."""
        if self.order_id is None or self.kind is None:
            return {}
        return {ORDER_ARG: self.order_id, KIND_ARG: self.kind.value}


class Mailer(Protocol):
    name: str  # "sendgrid" | "outbox"

    def send(self, email: Email, *, sandbox: bool = False) -> str:
        """Send one email; returns the provider's message id. Raises `StepError`.

        `sandbox`: the provider validates the email as it would send it, and delivers nothing
        (healer's canary). Never the default: a customer's email is always delivered."""
        ...


# --- the download email -------------------------------------------------------------------------

_TEXT = """\
Hello,

{intro} Download it here:

{link}

The link always works: each visit fetches a fresh copy of your file.

Order reference: {order_id}

Thank you for your order!
"""

_HTML = """\
<!DOCTYPE html>
<html>
<body style="font-family: Helvetica, Arial, sans-serif; color: #222;">
<p>Hello,</p>
<p>{intro}</p>
<p><a href="{link}" style="display: inline-block; padding: 12px 20px; background: #222;
color: #fff; text-decoration: none; border-radius: 4px;">Download your poster</a></p>
<p>Or copy this link into your browser:<br><a href="{link}">{link}</a></p>
<p>The link always works: each visit fetches a fresh copy of your file.</p>
<p style="color: #777; font-size: 12px;">Order reference: {order_id}</p>
<p>Thank you for your order!</p>
</body>
</html>
"""


def download_email(*, to: str, title: str, link: str, order_id: str) -> Email:
    """The customer's "your poster is ready" email; `title` is customer text, so it is cleaned."""
    title = single_line(title)
    link = single_line(link)
    order_id = single_line(order_id)
    if not link:
        raise StepError(ErrorClass.BAD_INPUT, "download link is empty")
    subject = f"Your poster is ready: {title}" if title else "Your poster is ready"
    return Email(
        to=to,
        subject=subject,
        text=_TEXT.format(intro=_intro(title), link=link, order_id=order_id),
        html=_HTML.format(
            intro=_intro(html.escape(title)),
            link=html.escape(link),
            order_id=html.escape(order_id),
        ),
        order_id=order_id,
        kind=EmailKind.DOWNLOAD,
    )


def _intro(title: str) -> str:
    return f"Your poster \u201c{title}\u201d is ready." if title else "Your poster is ready."


def single_line(value: str) -> str:
    """`value` without control characters or line breaks, whitespace collapsed."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()


# --- validation shared by both mailers ----------------------------------------------------------


def normalise_address(address: str) -> str | None:
    """A plain `local@domain` address (IDN domains as punycode), or None if it is not one."""
    if not isinstance(address, str) or address != address.strip() or address.count("@") != 1:
        return None
    local, domain = address.split("@")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not _LOCAL_PART.match(local) or not _DOMAIN.match(ascii_domain):
        return None
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return None
    return f"{local}@{ascii_domain}"


def _checked_recipient(email: Email) -> str:
    """The normalised recipient; raises BAD_INPUT for anything a provider would refuse."""
    to = normalise_address(email.to)
    if to is None:
        raise StepError(ErrorClass.BAD_INPUT, f"recipient address {email.to!r} is not valid")
    if not email.subject.strip() or _CONTROL.search(email.subject):
        raise StepError(ErrorClass.BAD_INPUT, "subject is empty or contains control characters")
    if not email.text.strip() or not email.html.strip():
        raise StepError(ErrorClass.BAD_INPUT, "email needs both a text and an HTML part")
    return to


@dataclass(frozen=True)
class _Sender:
    address: str
    name: str  # "" when FROM_EMAIL is a bare address

    def header(self) -> str:
        return formataddr((self.name, self.address)) if self.name else self.address


def _checked_sender(from_email: str) -> _Sender:
    """FROM_EMAIL as the shop configures it: `shop@example.com` or `Shop <shop@example.com>`."""
    name, address = parseaddr(from_email)
    normalised = normalise_address(address)
    if normalised is None or _CONTROL.search(from_email):
        raise ValueError(f"from address {from_email!r} is not a valid email address")
    return _Sender(normalised, name.strip())


# --- SendGrid -----------------------------------------------------------------------------------


class SendGridMailer:
    """Sends through SendGrid's v3 mail/send with the official `sendgrid` library."""

    name: str = "sendgrid"

    def __init__(
        self, api_key: str, from_email: str, api_base: str | None = None, timeout: float = 10.0
    ) -> None:
        # An empty key would make SendGridAPIClient fall back to os.environ behind our back.
        if not api_key:
            raise ValueError("SendGrid API key is empty")
        self._from = _checked_sender(from_email)
        self._api_key = api_key
        self._masked_key = mask_secret(api_key)
        self._host = _host(api_base)
        self._timeout = timeout
        self._client = SendGridAPIClient(api_key=api_key, host=self._host)
        # SendGridAPIClient takes no timeout; its python_http_client passes this one to urllib.
        self._client.client.timeout = timeout
        _redact_library_debug_logs()

    def __repr__(self) -> str:
        return (
            f"SendGridMailer(host={self._host!r}, from_email={self._from.header()!r}, "
            f"api_key={self._masked_key!r}, timeout={self._timeout})"
        )

    def send(self, email: Email, *, sandbox: bool = False) -> str:
        mail = self._mail(email, _checked_recipient(email))
        if sandbox:
            # SendGrid validates the request as it would send it, answers 200 instead of 202,
            # delivers nothing and reports no event about it.
            mail.mail_settings = MailSettings(sandbox_mode=SandBoxMode(True))
        try:
            response = self._client.send(mail)
        except SendGridHTTPError as exc:
            raise self._http_failure(exc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._connection_failure(exc) from exc
        return self._message_id(response.headers, sandbox=sandbox)

    def _mail(self, email: Email, to: str) -> Mail:
        try:
            mail = Mail(
                from_email=From(self._from.address, self._from.name or None),
                to_emails=To(to),
                subject=Subject(email.subject),
                plain_text_content=PlainTextContent(email.text),
                html_content=HtmlContent(email.html),
            )
        except SendGridException as exc:
            # The library refuses content that starts with something shaped like an API key.
            raise StepError(
                ErrorClass.BAD_INPUT, "email content starts with what looks like a SendGrid API key"
            ) from exc
        for key, value in email.tracking().items():
            mail.add_custom_arg(CustomArg(key, value))
        return mail

    def _message_id(self, headers: Any, *, sandbox: bool) -> str:
        message_id = headers.get("X-Message-Id") or ""
        if message_id:
            logger.debug("SendGrid accepted message %s", message_id)
        elif sandbox:
            logger.debug("SendGrid validated a message in sandbox mode")
        else:
            # Accepted all the same: raising would send the customer a second email on retry.
            logger.warning("SendGrid accepted a message but returned no X-Message-Id")
        return message_id

    def _http_failure(self, exc: SendGridHTTPError) -> StepError:
        status = int(exc.status_code)
        detail = self._scrub(_error_detail(exc.body, exc.reason))
        error_class, message = _classify_status(status, detail, self._masked_key, self._host)
        if status == 429:
            message += _rate_limit_hint(exc.headers)
        return StepError(error_class, message)

    def _connection_failure(self, exc: BaseException) -> StepError:
        if _is_timeout(exc):
            message = f"SendGrid at {self._host} did not answer within {self._timeout:g} s"
        else:
            message = f"cannot reach SendGrid at {self._host}: {self._scrub(str(exc))}"
        return StepError(ErrorClass.EMAIL_TRANSIENT, message)

    def _scrub(self, text: str) -> str:
        """Belt and braces: whatever a peer echoes back, the key leaves here masked."""
        return text.replace(self._api_key, self._masked_key)


def _classify_status(status: int, detail: str, key: str, host: str) -> tuple[ErrorClass, str]:
    if status == 401:
        return ErrorClass.EMAIL_AUTH, (
            f"SendGrid API key {key} is invalid, expired or revoked (401: {detail}); "
            "set a valid SENDGRID_API_KEY"
        )
    if status == 403:
        remedy = (
            "verify FROM_EMAIL as a Sender Identity in SendGrid"
            if "sender identity" in detail.lower()
            else "give the key the mail.send permission"
        )
        return ErrorClass.EMAIL_AUTH, (
            f"SendGrid API key {key} is not allowed to send mail (403: {detail}); {remedy}"
        )
    if status == 404:
        # A wrong API base, not a bad message: gating on the sendgrid check (which probes the same
        # base) lets orders resume by themselves once the setting is fixed.
        return ErrorClass.EMAIL_AUTH, (
            f"no SendGrid mail/send API at {host} (404: {detail}); check SENDGRID_API_BASE"
        )
    if status == 429:
        return ErrorClass.EMAIL_TRANSIENT, f"SendGrid rate limit reached (429: {detail})"
    if status >= 500:
        return ErrorClass.EMAIL_TRANSIENT, f"SendGrid is unavailable ({status}: {detail})"
    return ErrorClass.EMAIL_REJECTED, f"SendGrid rejected the message ({status}: {detail})"


def _error_detail(body: bytes | str | None, reason: Any) -> str:
    """SendGrid's `errors[].message (field)` joined, else the HTTP reason phrase."""
    try:
        items = json.loads(body or b"")["errors"]
        parts = [_error_item(item) for item in items if isinstance(item, dict)]
    except (ValueError, TypeError, KeyError):
        parts = []
    detail = "; ".join(part for part in parts if part) or str(reason or "no details")
    return single_line(detail)[:_DETAIL_LIMIT]


def _error_item(item: dict[str, Any]) -> str:
    message = str(item.get("message") or "")
    return f"{message} ({item['field']})" if item.get("field") else message


def _rate_limit_hint(headers: Any) -> str:
    try:
        reset = int(headers.get("X-RateLimit-Reset"))
    except (TypeError, ValueError, AttributeError):
        return ""
    return f"; the limit resets in {max(0, reset - int(time.time()))} s"


def _is_timeout(exc: BaseException) -> bool:
    # urllib raises TimeoutError itself while reading, or wraps it in URLError while connecting.
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def _host(api_base: str | None) -> str:
    """The library appends `/v3` itself, so accept the base with or without it."""
    host = (api_base or DEFAULT_API_BASE).rstrip("/")
    return host.removesuffix("/v3")


class _RedactAuthorization(logging.Filter):
    """python_http_client logs request headers at DEBUG, the Authorization header included."""

    _BEARER = re.compile(r"(Bearer\s+)[^'\"\s,}]+")
    _KEY = re.compile(r"SG\.[\w-]+\.[\w-]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._KEY.sub("SG.[redacted]", self._BEARER.sub(r"\1[redacted]", message))
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def _redact_library_debug_logs() -> None:
    library_logger = logging.getLogger("python_http_client.client")
    if not any(isinstance(f, _RedactAuthorization) for f in library_logger.filters):
        library_logger.addFilter(_RedactAuthorization())


# --- outbox -------------------------------------------------------------------------------------


class OutboxMailer:
    """Writes each email as an RFC 5322 `.eml` file: the embedded default when SendGrid is unset.
    Nothing reports on its emails afterwards: no delivery events come back from an outbox."""

    name: str = "outbox"

    def __init__(self, directory: Path, from_email: str) -> None:
        self._directory = Path(directory)
        self._from = _checked_sender(from_email)

    def __repr__(self) -> str:
        sender = self._from.header()
        return f"OutboxMailer(directory={str(self._directory)!r}, from_email={sender!r})"

    def send(self, email: Email, *, sandbox: bool = False) -> str:
        message = self._compose(email, _checked_recipient(email))
        if sandbox:  # composed, so validated; an outbox delivers by writing, so nothing is written
            return str(message["Message-ID"])
        try:
            path = self._write(message.as_bytes())
        except OSError as exc:
            raise _outbox_failure(exc, self._directory) from exc
        logger.debug("outbox: wrote %s", path.name)
        return str(message["Message-ID"])

    def _compose(self, email: Email, to: str) -> EmailMessage:
        message = EmailMessage(policy=SMTP)  # CRLF line ends, as on the wire
        message["From"] = self._from.header()
        message["To"] = to
        message["Subject"] = email.subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=self._from.address.rpartition("@")[2])
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    def _write(self, data: bytes) -> Path:
        """Write to a hidden temp file and rename, so readers never see half a message."""
        self._directory.mkdir(parents=True, exist_ok=True)
        final = self._directory / _outbox_name()
        write_atomically(final, data)
        return final


def _outbox_name() -> str:
    # UTC timestamp first so names sort by time; the suffix keeps same-microsecond names apart.
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(4)}.eml"


def _outbox_failure(exc: OSError, directory: Path) -> StepError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StepError(ErrorClass.RESOURCES, f"no space left for the outbox in {directory}")
    return StepError(ErrorClass.EMAIL_TRANSIENT, f"cannot write to the outbox {directory}: {exc}")
