"""An in-process SendGrid v3 API speaking the real wire format of the endpoints healer uses.

The real `sendgrid` library is pointed at it (`SendGridAPIClient(key, host=server.url)`), so tests
exercise the same request building, status handling and exceptions as production. Endpoints:

- `POST /v3/mail/send`: validated like SendGrid validates (all errors reported at once, with
  SendGrid's messages and field paths); 202 with an `X-Message-Id` header on success. With
  `mail_settings.sandbox_mode.enable` true, validated the same and answered 200: nothing is
  delivered, so the message is in `sandboxed`, never in `messages`.
- `GET /v3/scopes`: the key's scopes, which the health check reads to tell "allowed to send".

Faults are switched from Python: `fail_next`, `set_delay`, `set_hang`, `set_key_valid`.

Its Event Webhook, as SendGrid's Signed Event Webhook sends it: the server holds a P-256 key pair
and shows the public key as SendGrid's Mail Settings do (`public_key`, base64 DER). `event(message,
"bounce")` is the event SendGrid would report about a sent message, carrying the message's custom
arguments as top-level fields; `post_events(url, events)` posts a batch of them the way SendGrid
does: a JSON array (ending in CRLF), signed over the timestamp followed by the body, in the
`X-Twilio-Email-Event-Webhook-Signature` and `-Timestamp` headers. `signed_batch` and `sign` give
the body and headers without posting, for tests that send them themselves (forged, stale).
"""

from __future__ import annotations

import base64
import enum
import http.client
import itertools
import json
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
_BAD_GRANT = "The provided authorization grant is invalid, expired, or revoked"
# SendGrid's limit on a whole mail/send request, attachments included.
DEFAULT_MAX_BODY_BYTES = 30 * 1024 * 1024

FULL_ACCESS_SCOPES: tuple[str, ...] = (
    "mail.send",
    "scopes.read",
    "stats.read",
    "suppression.read",
    "user.profile.read",
)
READ_ONLY_SCOPES: tuple[str, ...] = ("scopes.read", "stats.read", "user.profile.read")

# Close to SendGrid's own check: one @, no spaces or specials, a dotted domain.
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[^@\s<>(),;:\"\[\]\\]+\.[^@\s<>(),;:\"\[\]\\.]+$")


def make_api_key() -> str:
    """A key of SendGrid's shape: `SG.<22 chars>.<43 chars>` of URL-safe base64."""
    return f"SG.{_b64(16)}.{_b64(32)}"


def _b64(n_bytes: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(n_bytes)).decode().rstrip("=")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, with the status it answered (None: hung up)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None


@dataclass(frozen=True)
class SentMessage:
    """One accepted email: SendGrid sends one per personalization."""

    message_id: str
    from_email: str
    to: tuple[str, ...]
    subject: str
    text: str | None
    html: str | None
    body: dict[str, Any]
    # The message's custom arguments (the personalization's over the top-level ones): SendGrid
    # copies them into every event it reports about the message.
    custom_args: dict[str, str] = field(default_factory=dict)
    # The request's mail_settings.sandbox_mode.enable: validated only, never delivered.
    sandbox_mode: bool = False


SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


class EventSignature(enum.Enum):
    VALID = "valid"
    FORGED = "forged"  # signed with a key other than the one the account shows


@dataclass
class _Fault:
    status: int
    remaining: int
    path: str | None
    message: str | None
    field: str | None


@dataclass
class _Key:
    scopes: tuple[str, ...]
    valid: bool = True


def _error(
    status: int,
    message: str,
    field_name: str | None = None,
    help_url: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    return _errors(status, [_item(message, field_name, help_url)], headers)


def _item(
    message: str, field_name: str | None = None, help_url: str | None = None
) -> dict[str, Any]:
    return {"message": message, "field": field_name, "help": help_url}


def _errors(
    status: int, items: list[dict[str, Any]], headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    return _json(status, {"errors": items}, headers)


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(payload).encode()
    return Response(status, body, (("Content-Type", "application/json"), *headers))


def _fault_response(status: int, message: str | None = None, field: str | None = None) -> Response:
    """What SendGrid (or the load balancer in front of it) answers with this status."""
    if message is not None:
        extra = _rate_limit_headers() if status == 429 else ()
        return _error(status, message, field, headers=extra)
    if status == 400:
        return _error(400, "Bad Request")
    if status == 401:
        return _error(401, _BAD_GRANT)
    if status == 403:
        return _error(403, "access forbidden")
    if status == 413:
        return _error(413, "Payload Too Large")
    if status == 429:
        return _error(429, "too many requests", headers=_rate_limit_headers())
    if status == 500:
        return _error(500, "internal error")
    if status in (502, 503, 504):
        # These come from the edge proxy, so they are HTML, not SendGrid's JSON error body.
        phrase = HTTPStatus(status).phrase
        page = f"<html><head><title>{status} {phrase}</title></head><body>{phrase}</body></html>"
        return Response(status, page.encode(), (("Content-Type", "text/html"),))
    raise ValueError(f"no canned SendGrid response for status {status}")


def _rate_limit_headers() -> tuple[tuple[str, str], ...]:
    reset = int(time.time()) + 60
    return (
        ("X-RateLimit-Limit", "600"),
        ("X-RateLimit-Remaining", "0"),
        ("X-RateLimit-Reset", str(reset)),
    )


# --- mail/send validation: SendGrid's messages and field paths ---------------------------------


def _valid_address(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 320 and bool(_ADDRESS.match(value))


def _personalization_errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        return [
            _item(
                "The personalizations field is required and must have at least one "
                "personalization.",
                "personalizations",
                f"{_HELP}#-Personalizations-Errors",
            )
        ]
    errors: list[dict[str, Any]] = []
    for index, personalization in enumerate(personalizations):
        errors += _recipient_errors(index, personalization)
    return errors


def _recipient_errors(index: int, personalization: Any) -> list[dict[str, Any]]:
    to = personalization.get("to") if isinstance(personalization, dict) else None
    if not isinstance(to, list) or not to:
        return [
            _item(
                "The to array is required for all personalization objects, and must have at "
                "least one email object with a valid email address.",
                f"personalizations.{index}.to",
                f"{_HELP}#message.personalizations.to",
            )
        ]
    errors = []
    for kind in ("to", "cc", "bcc"):
        for position, recipient in enumerate(personalization.get(kind) or []):
            address = recipient.get("email") if isinstance(recipient, dict) else None
            if not _valid_address(address):
                errors.append(
                    _item(
                        "Does not contain a valid address.",
                        f"personalizations.{index}.{kind}.{position}.email",
                        f"{_HELP}#message.personalizations.{kind}",
                    )
                )
    return errors


def _from_errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    sender = body.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        return [
            _item(
                "The from object must be provided for every email send. It is an object that "
                'requires the email parameter, but may also contain a name parameter.  e.g. '
                '{"email" : "example@example.com"}  or {"email" : "example@example.com", '
                '"name" : "Example Recipient"}.',
                "from.email",
                f"{_HELP}#message.from",
            )
        ]
    if not _valid_address(sender["email"]):
        return [
            _item("The from email does not contain a valid address.", "from.email",
                  f"{_HELP}#message.from")
        ]
    return []


def _subject_errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    if _non_empty_string(body.get("subject")):
        return []
    personalizations = body.get("personalizations")
    if isinstance(personalizations, list) and personalizations and all(
        isinstance(p, dict) and _non_empty_string(p.get("subject")) for p in personalizations
    ):
        return []
    return [
        _item(
            "The subject is required. You can get around this requirement if you use a "
            "template with a subject defined or if every personalization has a subject defined.",
            "subject",
            f"{_HELP}#message.subject",
        )
    ]


def _content_errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = body.get("content")
    if not isinstance(content, list) or not content:
        return [
            _item(
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block. We typically suggest both "
                "text/plain and text/html blocks are included, but only one block is required.",
                "content",
                f"{_HELP}#message.content",
            )
        ]
    errors = _block_errors(content)
    return errors or _order_errors([block["type"] for block in content])


def _block_errors(content: list[Any]) -> list[dict[str, Any]]:
    errors = []
    for index, block in enumerate(content):
        block = block if isinstance(block, dict) else {}
        if not _non_empty_string(block.get("type")):
            errors.append(
                _item("The content type must be a string at least one character in length.",
                      f"content.{index}.type", f"{_HELP}#message.content.type")
            )
        if not _non_empty_string(block.get("value")):
            errors.append(
                _item("The content value must be a string at least one character in length.",
                      f"content.{index}.value", f"{_HELP}#message.content.value")
            )
    return errors


def _order_errors(types: list[str]) -> list[dict[str, Any]]:
    if types.count("text/plain") > 1 or types.count("text/html") > 1:
        return [
            _item("If present, text/plain and text/html may only be provided once.", "content",
                  f"{_HELP}#message.content")
        ]
    expected = [t for t in ("text/plain", "text/html") if t in types]
    if types[: len(expected)] != expected:
        return [
            _item(
                "If present, text/plain must be first, followed by text/html, followed by any "
                "other content.",
                "content",
                f"{_HELP}#message.content",
            )
        ]
    return []


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _custom_args_errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Custom arguments are string to string, at the top and in each personalization."""
    places = [("custom_args", body.get("custom_args"))] + [
        (f"personalizations.{i}.custom_args", p.get("custom_args"))
        for i, p in enumerate(body.get("personalizations") or []) if isinstance(p, dict)
    ]
    errors = []
    for where, args in places:
        if args is None:
            continue
        if not isinstance(args, dict):
            errors.append(_item("Invalid type. Expected: object, given: " + _json_type(args) + ".", where))
            continue
        errors += [_item("Invalid type. Expected: string, given: " + _json_type(value) + ".", f"{where}.{key}")
                   for key, value in args.items() if not isinstance(value, str)]
    return errors


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), "unknown")


def validate_mail(body: Any) -> list[dict[str, Any]]:
    """SendGrid's error items for a mail/send body; empty when it would be accepted."""
    if not isinstance(body, dict):
        return [_item("Bad Request")]
    return (
        _personalization_errors(body)
        + _from_errors(body)
        + _subject_errors(body)
        + _content_errors(body)
        + _custom_args_errors(body)
        + _mail_settings_errors(body)
    )


def _mail_settings_errors(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Sandbox mode, the one mail setting healer sends: `enable` must be a JSON boolean."""
    sandbox = (body.get("mail_settings") or {}).get("sandbox_mode")
    if sandbox is None or isinstance(sandbox, dict) and isinstance(sandbox.get("enable"), bool):
        return []
    return [_item("The sandbox mode enable param should be a boolean value.", "mail_settings.sandbox_mode.enable")]


def sandbox_mode(body: dict[str, Any]) -> bool:
    return bool(((body.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable"))


def _messages_of(body: dict[str, Any], message_id: str) -> list[SentMessage]:
    parts = {block["type"]: block["value"] for block in body["content"]}
    return [
        SentMessage(
            message_id=message_id,
            from_email=body["from"]["email"],
            to=tuple(r["email"] for r in p["to"]),
            subject=p.get("subject") or body["subject"],
            text=parts.get("text/plain"),
            html=parts.get("text/html"),
            body=body,
            custom_args={**(body.get("custom_args") or {}), **(p.get("custom_args") or {})},
            sandbox_mode=sandbox_mode(body),
        )
        for p in body["personalizations"]
    ]


# --- the server ---------------------------------------------------------------------------------

Endpoint = Callable[["SendGridServer", Request, str], Response]


class SendGridServer:
    """SendGrid v3 on 127.0.0.1 at an ephemeral port; all state behind one lock."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key or make_api_key()
        self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {self.api_key: _Key(FULL_ACCESS_SCOPES)}
        self._faults: list[_Fault] = []
        self._delay = 0.0
        self._hang = False
        self._held = 0  # requests held unanswered while hung
        self._stopping = threading.Event()
        self._messages: list[SentMessage] = []
        self._requests: list[RecordedRequest] = []
        # The Signed Event Webhook's key pair; SendGrid shows the public half, keeps the other.
        self._signing_key = ec.generate_private_key(ec.SECP256R1())
        self._event_numbers = itertools.count(1)
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-sendgrid", daemon=True
        )

    # lifecycle

    def start(self) -> SendGridServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hung and delayed handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SendGridServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The `host` for SendGridAPIClient: scheme, host and port, without `/v3`."""
        return f"http://127.0.0.1:{self._httpd.server_port}"

    # what happened

    @property
    def messages(self) -> list[SentMessage]:
        """The messages accepted for delivery."""
        with self._lock:
            return [m for m in self._messages if not m.sandbox_mode]

    @property
    def sandboxed(self) -> list[SentMessage]:
        """The messages validated in sandbox mode: answered 200, never delivered."""
        with self._lock:
            return [m for m in self._messages if m.sandbox_mode]

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def held(self) -> int:
        """How many requests the hung server holds unanswered right now (recorded only once answered)."""
        with self._lock:
            return self._held

    @property
    def public_key(self) -> str:
        """The Event Webhook's verification key, as SendGrid shows it: base64 DER (SubjectPublicKeyInfo)."""
        return _public_key_text(self._signing_key)

    # the Event Webhook

    def event(self, message: SentMessage, event: str, **fields: Any) -> dict[str, Any]:
        """The event SendGrid reports about `message`: `delivered`, `bounce`, `blocked` (a bounce of
        type blocked), `dropped`, `spamreport`, `deferred`, `processed`...; `fields` add or replace
        fields (`sg_message_id=None` leaves it out, as some asynchronous bounces do)."""
        number = next(self._event_numbers)
        name = "bounce" if event == "blocked" else event
        reported: dict[str, Any] = {
            "email": message.to[0],
            "timestamp": int(time.time()),
            "smtp-id": f"<{message.message_id}@ismtpd0042p1lon1.sendgrid.net>",
            "event": name,
            "sg_event_id": base64.urlsafe_b64encode(f"{name}-{number}-{message.message_id}-0".encode())
            .decode().rstrip("="),
            "sg_message_id": f"{message.message_id}.filterdrecv-5bd8d5c6d4-x7k9p-1-{number:08X}-0.0",
            **_EVENT_FIELDS.get(event, {}),
            **message.custom_args,
        }
        reported.update(fields)
        return {key: value for key, value in reported.items() if value is not None}

    def sign(self, body: bytes, timestamp: int | None = None,
             signature: EventSignature = EventSignature.VALID) -> dict[str, str]:
        """The headers SendGrid sends with `body`: its signature of the timestamp then the body."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        key = self._signing_key if signature is EventSignature.VALID else ec.generate_private_key(ec.SECP256R1())
        signed = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "User-Agent": "SendGrid Event API",
            SIGNATURE_HEADER: base64.b64encode(signed).decode(),
            TIMESTAMP_HEADER: stamp,
        }

    def signed_batch(self, events: list[dict[str, Any]], timestamp: int | None = None,
                     signature: EventSignature = EventSignature.VALID) -> tuple[bytes, dict[str, str]]:
        """A batch as SendGrid posts it: body and headers."""
        body = (json.dumps(events) + "\r\n").encode()  # SendGrid's bodies end in CRLF, and it signs that too
        return body, self.sign(body, timestamp, signature)

    def post_events(self, url: str, events: list[dict[str, Any]], timestamp: int | None = None,
                    signature: EventSignature = EventSignature.VALID) -> tuple[int, bytes]:
        """POST a signed batch to `url`, as SendGrid does; the answer's status and body."""
        body, headers = self.signed_batch(events, timestamp, signature)
        return post(url, body, headers)

    # switches

    def add_key(self, scopes: Iterable[str] = FULL_ACCESS_SCOPES) -> str:
        """Create another key; without `mail.send` in `scopes`, mail/send answers 403."""
        key = make_api_key()
        with self._lock:
            self._keys[key] = _Key(tuple(scopes))
        return key

    def set_key_valid(self, valid: bool, key: str | None = None) -> None:
        """Revoke (False) or restore (True) a key; the default key unless one is named."""
        with self._lock:
            self._keys[key or self.api_key].valid = valid

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        path: str | None = None,
        message: str | None = None,
        field: str | None = None,
    ) -> None:
        """Answer the next `count` requests (to `path` only, if given) with SendGrid's `status`.

        The body is SendGrid's usual one for that status, or `{"errors": [{message, field}]}`
        when `message` is given (say, a 400 naming the field SendGrid objected to).
        """
        _fault_response(status, message, field)  # a bad status fails here, in the test
        with self._lock:
            self._faults.append(_Fault(status, count, path, message, field))

    def set_delay(self, seconds: float) -> None:
        with self._lock:
            self._delay = seconds

    def set_hang(self, hang: bool = True) -> None:
        """Hung: read requests and never answer, until switched off or stopped."""
        with self._lock:
            self._hang = hang

    # request handling, called from handler threads

    def handle(self, request: Request) -> Response | None:
        """The response to send, or None to hang up without answering."""
        if not self._wait_before_answering():
            self._record(request, None)
            return None
        response = self._take_fault(request.path) or self._route(request)
        self._record(request, response.status)
        return response

    def _wait_before_answering(self) -> bool:
        with self._lock:
            delay, hang = self._delay, self._hang
        if hang:
            with self._lock:
                self._held += 1
            try:
                while not self._stopping.wait(0.05):
                    with self._lock:
                        if not self._hang:
                            break
                else:
                    return False
            finally:
                with self._lock:
                    self._held -= 1
        if delay:
            self._stopping.wait(delay)
        return not self._stopping.is_set()

    def _take_fault(self, path: str) -> Response | None:
        with self._lock:
            for fault in self._faults:
                if fault.path in (None, path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return _fault_response(fault.status, fault.message, fault.field)
        return None

    def _route(self, request: Request) -> Response:
        methods = {method for method, path in _ROUTES if path == request.path}
        if not methods:
            return _error(404, "resource not found")
        if request.method not in methods:
            return _error(405, "method not allowed")
        key_or_failure = self._authenticate(request)
        if isinstance(key_or_failure, Response):
            return key_or_failure
        return _ROUTES[(request.method, request.path)](self, request, key_or_failure)

    def _authenticate(self, request: Request) -> str | Response:
        header = request.headers.get("authorization", "")
        if not header:
            return _error(401, "authorization required")
        scheme, _, key = header.partition(" ")
        with self._lock:
            known = self._keys.get(key)
            valid = scheme.lower() == "bearer" and known is not None and known.valid
        return key if valid else _error(401, _BAD_GRANT)

    def scopes_of(self, key: str) -> tuple[str, ...]:
        """For endpoints: the scopes of an authenticated key."""
        with self._lock:
            return self._keys[key].scopes

    def accept(self, body: dict[str, Any]) -> str:
        """For endpoints: store a validated mail/send body; returns its X-Message-Id."""
        message_id = _b64(16)
        with self._lock:
            self._messages.extend(_messages_of(body, message_id))
        return message_id

    def _record(self, request: Request, status: int | None) -> None:
        recorded = RecordedRequest(
            request.method, request.path, request.headers, request.body, status
        )
        with self._lock:
            self._requests.append(recorded)


# --- endpoints: one function each ---------------------------------------------------------------


def _mail_send(server: SendGridServer, request: Request, key: str) -> Response:
    if "mail.send" not in server.scopes_of(key):
        return _error(403, "access forbidden")
    if len(request.body) > server.max_body_bytes:
        return _error(413, "Payload Too Large")
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _error(400, "Content-Type should be application/json.")
    try:
        body = request.json()
    except ValueError:
        return _error(400, "Bad Request")
    errors = validate_mail(body)
    if errors:
        return _errors(400, errors)
    if sandbox_mode(body):
        server.accept(body)
        return Response(200)
    return Response(202, b"", (("X-Message-Id", server.accept(body)),))


def _scopes(server: SendGridServer, request: Request, key: str) -> Response:
    return _json(200, {"scopes": list(server.scopes_of(key))})


_ROUTES: dict[tuple[str, str], Endpoint] = {
    ("POST", "/v3/mail/send"): _mail_send,
    ("GET", "/v3/scopes"): _scopes,
}


# --- the Event Webhook --------------------------------------------------------------------------

# What SendGrid adds to each kind of event (see its Event Webhook reference).
_EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "processed": {},
    "delivered": {"response": "250 2.0.0 OK 1733400000 ok", "ip": "149.72.123.24", "tls": 1},
    "deferred": {"response": "451 4.7.1 Try again later", "attempt": "1", "ip": "149.72.123.24", "tls": 1},
    "bounce": {"type": "bounce", "status": "5.1.1", "bounce_classification": "Invalid Address",
               "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
               "ip": "149.72.123.24", "tls": 1},
    "blocked": {"type": "blocked", "status": "5.7.1", "bounce_classification": "Reputation",
                "reason": "550 5.7.1 Message rejected due to local policy", "ip": "149.72.123.24", "tls": 1},
    "dropped": {"reason": "Bounced Address", "status": "5.0.0"},
    "spamreport": {},
}


def _public_key_text(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0) -> tuple[int, bytes]:
    """One POST over a fresh connection (as SendGrid's poster makes): status and body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path or "/", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- HTTP plumbing ------------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Hung handlers must not hold up stop(); they end when `_stopping` is set anyway.
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: SendGridServer
    ) -> None:
        super().__init__(address, handler)
        self.app = app

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and left is what timeout tests are about, not a fault here.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        # Read the whole body even when refusing it, so the client is not cut off mid-send.
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=urlsplit(self.path).path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        response = self.server.app.handle(request)
        if response is None:
            self.close_connection = True
            return
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are in `server.requests`; stderr noise helps no one
