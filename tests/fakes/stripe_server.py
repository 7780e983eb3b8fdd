"""An in-process fake of the Stripe API, speaking Stripe's wire format for the endpoints we use.

Point the real `stripe` library (v16) at it per client, never through the global `stripe.api_base`:

    server = FakeStripeServer().start()          # or the `stripe_server` pytest fixture
    client = stripe.StripeClient(
        server.api_key,
        base_addresses={"api": server.url},      # "http://127.0.0.1:PORT", no trailing /v1
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=2.0),
    )
    client.v1.payment_intents.retrieve("pi_...")
    server.stop()

Wire format, as Stripe sends it: form-encoded request bodies and queries in bracket notation
(`metadata[order_id]=...`, `created[gte]=...`, `types[0]=...`); JSON responses carrying `"object"`;
list objects `{"object": "list", "data", "has_more", "url"}` newest first; errors as
`{"error": {"type", "code", "message", "param"}}`; a `Request-Id` header on every response;
`Idempotency-Key` replay on POST (`Idempotent-Replayed: true`). Unknown parameters are rejected
("Received unknown parameter"), so a typo in a caller fails here as it would against Stripe.

Endpoints: GET /v1/payment_intents/{id}, GET+POST /v1/payment_intents, GET /v1/events,
POST /v1/refunds, GET /v1/charges/{id}, GET /v1/balance, GET /v1/webhook_endpoints.

The account's webhook endpoints are set from Python (`add_webhook_endpoint`,
`remove_webhook_endpoints`). The account starts (and `reset()` returns) with the endpoints a shop
set up as healer's operations guide says: enabled, with the three event types healer handles, at
the public base URLs healer runs with in the tests (its default, and the shop fixtures').

Faults are switched from Python: `fail_next(status, count)` (429, 5xx...), `set_delay(seconds)`,
`hang()` (accept, never answer), keys that are unknown (401) or restricted (403), and
`omit_fields(path, *names)` (successful answers there lack those fields, as an answer of another
API version or a trimming proxy may: the object is made all the same). Every request is
logged in `server.requests`. The fake-only `test_status` parameter of POST /v1/payment_intents
sets the new intent's status; `confirm=true` (with a `pm_card_...` payment method) gives
`succeeded`, as in Stripe's test mode.

Stripe sends `"type": "invalid_request_error"` in 401 and 403 bodies (there is no
`authentication_error` type on the wire); the library picks `AuthenticationError` and
`PermissionError` from the status code, so this fake does the same.
"""

from __future__ import annotations

import copy
import enum
import json
import logging
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

logger = logging.getLogger(__name__)

API_VERSION = "2026-10-28.endive"
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
WEBHOOK_TOLERANCE_SECONDS = stripe.Webhook.DEFAULT_TOLERANCE

PAYMENT_INTENT_STATUSES = frozenset(
    {
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "processing",
        "requires_capture",
        "canceled",
        "succeeded",
    }
)

# The event Stripe emits when a payment intent enters a status.
_STATUS_EVENTS = {
    "requires_action": "payment_intent.requires_action",
    "processing": "payment_intent.processing",
    "requires_capture": "payment_intent.amount_capturable_updated",
    "canceled": "payment_intent.canceled",
    "succeeded": "payment_intent.succeeded",
}

# Permissions for restricted keys, one per route: "<resource>:read" or "<resource>:write".
ALL_PERMISSIONS = frozenset(
    {
        "payment_intents:read",
        "payment_intents:write",
        "events:read",
        "refunds:write",
        "charges:read",
        "balance:read",
        "webhook_endpoints:read",
    }
)

# What a shop set up as healer's guide says has, in every test until one changes it.
HEALER_EVENT_TYPES = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")
DEFAULT_WEBHOOK_URLS = ("http://127.0.0.1:8080/stripe/webhook", "https://shop.example/stripe/webhook")


class WebhookSignature(enum.Enum):
    VALID = "valid"
    FORGED = "forged"  # signed with a secret other than the endpoint's
    STALE = "stale"  # correctly signed, but older than the library's tolerance


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str  # the raw query string
    params: dict[str, Any]  # query (GET) or form body (POST), bracket notation decoded
    idempotency_key: str | None
    api_key: str | None = None  # the bearer key sent: which client (each replica its own) asked
    at: float = 0.0  # time.time() when it arrived


@dataclass(frozen=True)
class _Fault:
    status: int
    path_prefix: str | None

    def matches(self, path: str) -> bool:
        return self.path_prefix is None or path.startswith(self.path_prefix)


class ApiError(Exception):
    """A Stripe error response; raised by handlers, turned into JSON by the request handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param is not None:
            self.body["param"] = param
        self.headers = headers or {}


@dataclass
class _Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Call:
    """One authenticated API request, as handlers see it."""

    method: str
    path: str
    path_id: str | None
    params: dict[str, Any]
    request_id: str
    idempotency_key: str | None
    livemode: bool  # a live key; every object here is a test-mode object


@dataclass(frozen=True)
class _Route:
    handler: Callable[[FakeStripeServer, _Call], dict[str, Any]]
    permission: str
    params: frozenset[str]


def _new_id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(24))


def _is_live(key: str) -> bool:
    return key.startswith(("sk_live_", "rk_live_"))


def _masked_key(key: str) -> str:
    # Stripe's own rendering of a rejected key: kind prefix, stars, last 4.
    head = key[:8] if key.startswith(("sk_", "rk_")) else ""
    return head + "*" * max(len(key) - len(head) - 4, 0) + key[-4:]


class FakeStripeServer:
    """A Stripe API on 127.0.0.1:<ephemeral port>, served from a daemon thread; thread-safe."""

    def __init__(self) -> None:
        self.api_key = "sk_test_" + _new_id("")
        self.restricted_key = "rk_test_" + _new_id("")  # valid, but with no permissions
        self.webhook_secret = "whsec_" + _new_id("")
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._reset_state()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeStripeServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="fake-stripe", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeStripeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def reset(self) -> None:
        """Forget every object, fault, key change and logged request; free hung requests."""
        with self._lock:
            self._release.set()
            self._reset_state()

    def _reset_state(self) -> None:
        self._keys: dict[str, frozenset[str]] = {
            self.api_key: ALL_PERMISSIONS,
            self.restricted_key: frozenset(),
        }
        self._payment_intents: dict[str, dict[str, Any]] = {}
        self._charges: dict[str, dict[str, Any]] = {}
        self._refunds: dict[str, dict[str, Any]] = {}
        self._events: dict[str, dict[str, Any]] = {}
        self._webhook_endpoints: dict[str, dict[str, Any]] = {}
        self._order: dict[str, int] = {}  # id -> insertion sequence, to order equal `created`
        self._replays: dict[tuple[str, str], tuple[tuple[Any, ...], _Response]] = {}
        self._faults: list[_Fault] = []
        self._requests: list[RecordedRequest] = []
        self._delay = 0.0
        self._hang_remaining: int | None = 0  # None: hang every request
        self._omitted: dict[str, frozenset[str]] = {}  # path -> fields left out of its answers
        self._release = threading.Event()
        for url in DEFAULT_WEBHOOK_URLS:
            self._new_webhook_endpoint(url, HEALER_EVENT_TYPES, "enabled")

    # -- faults and keys ---------------------------------------------------------------------------

    def fail_next(self, status: int = 500, count: int = 1, path: str | None = None) -> None:
        """Answer the next `count` requests (those under `path`, if given) with a `status` error.

        429 carries Stripe's rate-limit body with `Retry-After` and `Stripe-Should-Retry`; 5xx an
        `api_error` body; 401/403/404/400 the usual `invalid_request_error` bodies.
        """
        with self._lock:
            self._faults.extend(_Fault(status, path) for _ in range(count))

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering every request (0 to stop)."""
        with self._lock:
            self._delay = seconds

    def hang(self, count: int | None = None) -> None:
        """Accept the next `count` requests (all, if None) and never answer them.

        A hung request is freed (its connection closed unanswered) by `reset()` or `stop()`.
        """
        with self._lock:
            self._hang_remaining = count

    def omit_fields(self, path: str, *names: str) -> None:
        """From now on (until `reset()`), successful answers to requests on `path` leave out the
        top-level fields `names`; what the request did (an object made, a refund) is unchanged."""
        with self._lock:
            self._omitted[path] = frozenset(names)

    def add_key(self, key: str, permissions: Iterable[str] = ALL_PERMISSIONS) -> None:
        """Accept another key; a restricted key gets only `permissions` (see ALL_PERMISSIONS)."""
        with self._lock:
            self._keys[key] = frozenset(permissions)

    def revoke_key(self, key: str) -> None:
        """From now on `key` is unknown: 401, as a rolled key gets."""
        with self._lock:
            self._keys.pop(key, None)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def request_count(self, path: str | None = None, method: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method)
        )

    # -- objects, from Python ----------------------------------------------------------------------

    def create_payment_intent(
        self,
        amount: int,
        currency: str,
        metadata: dict[str, str] | None = None,
        status: str = "succeeded",
        created: int | None = None,
    ) -> dict[str, Any]:
        """A new PaymentIntent (and its events), as a JSON dict."""
        _check_status(status)
        with self._lock:
            intent = self._new_payment_intent(amount, currency, metadata or {}, created)
            # A back-dated intent got its status (and events) back then too.
            self._enter_status(intent, status, None, at=intent["created"])
            return copy.deepcopy(intent)

    def set_status(self, payment_intent_id: str, status: str) -> dict[str, Any]:
        """Move a PaymentIntent to `status`, recording the event Stripe would emit."""
        _check_status(status)
        with self._lock:
            intent = self._payment_intents[payment_intent_id]
            self._enter_status(intent, status, None, at=int(time.time()))
            return copy.deepcopy(intent)

    def payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._payment_intents[payment_intent_id])

    def charge(self, payment_intent_id: str) -> dict[str, Any]:
        """The latest charge of a PaymentIntent (it has one once succeeded)."""
        with self._lock:
            charge_id = self._payment_intents[payment_intent_id]["latest_charge"]
            return copy.deepcopy(self._charges[charge_id])

    def refunds(self, payment_intent_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(r)
                for r in self._refunds.values()
                if payment_intent_id is None or r["payment_intent"] == payment_intent_id
            ]

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """Recorded events, newest first, as GET /v1/events lists them."""
        with self._lock:
            found = [e for e in self._events.values() if type is None or e["type"] == type]
            return copy.deepcopy(self._newest_first(found))

    def add_webhook_endpoint(
        self, url: str, enabled_events: Iterable[str] = HEALER_EVENT_TYPES, status: str = "enabled"
    ) -> dict[str, Any]:
        """A webhook endpoint of the account, as the dashboard makes one (`["*"]`: every event)."""
        if status not in ("enabled", "disabled"):
            raise ValueError(f"not a webhook endpoint status: {status!r}")
        with self._lock:
            return copy.deepcopy(self._new_webhook_endpoint(url, tuple(enabled_events), status))

    def remove_webhook_endpoints(self) -> None:
        """The account has no webhook endpoint (the defaults included)."""
        with self._lock:
            self._webhook_endpoints.clear()

    def webhook_endpoints(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._newest_first(list(self._webhook_endpoints.values())))

    # -- webhooks ----------------------------------------------------------------------------------

    def webhook_payload(
        self,
        event_type: str,
        obj: dict[str, Any],
        *,
        signature: WebhookSignature = WebhookSignature.VALID,
        event_id: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A webhook delivery of a new event about `obj`: (body, headers incl. Stripe-Signature).

        The event is not added to GET /v1/events; to deliver a recorded one use `webhook_for`.
        """
        event = self._build_event(event_type, obj, request=None, created=int(time.time()))
        if event_id is not None:
            event["id"] = event_id
        return self.webhook_for(event, signature=signature)

    def webhook_for(
        self, event: dict[str, Any], *, signature: WebhookSignature = WebhookSignature.VALID
    ) -> tuple[bytes, dict[str, str]]:
        """A webhook delivery of `event` (e.g. one of `events()`), signed as `signature` says."""
        body = json.dumps(event, indent=2).encode()
        timestamp = int(time.time())
        secret = self.webhook_secret
        if signature is WebhookSignature.FORGED:
            secret = "whsec_" + _new_id("")
        elif signature is WebhookSignature.STALE:
            timestamp -= WEBHOOK_TOLERANCE_SECONDS + 60
        header = stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret, timestamp=timestamp
        )
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": header,
        }
        return body, headers

    # -- request handling (called from handler threads) --------------------------------------------

    def _serve(self, method: str, raw_path: str, body: bytes, headers: Any) -> _Response | None:
        """The response to one HTTP request, or None to leave it unanswered (hang)."""
        split = urlsplit(raw_path)
        params = _decode_params(split.query if method == "GET" else body.decode())
        idempotency_key = headers.get("Idempotency-Key")
        request_id = _new_id("req_")
        with self._lock:
            bearer = (headers.get("Authorization") or "").partition(" ")[2].strip() or None
            self._requests.append(
                RecordedRequest(method, split.path, split.query, params, idempotency_key, bearer, time.time())
            )
            hang, delay, release = self._take_hang(), self._delay, self._release
        if hang:
            release.wait()
            return None
        if delay and release.wait(delay):
            return None
        try:
            response = self._answer(
                method, split.path, params, headers, idempotency_key, request_id
            )
        except ApiError as err:
            response = _Response(err.status, {"error": err.body}, dict(err.headers))
        response.headers["Request-Id"] = request_id
        with self._lock:
            omitted = self._omitted.get(split.path, frozenset())
        if omitted and response.status == 200:
            body = {k: v for k, v in response.body.items() if k not in omitted}
            response = _Response(response.status, body, response.headers)
        return response

    def _take_hang(self) -> bool:
        if self._hang_remaining is None:
            return True
        if self._hang_remaining > 0:
            self._hang_remaining -= 1
            return True
        return False

    def _answer(
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        headers: Any,
        idempotency_key: str | None,
        request_id: str,
    ) -> _Response:
        with self._lock:
            self._raise_fault(path)
            key = self._authenticate(headers.get("Authorization"))
            route, path_id = _route(method, path)
            self._authorize(key, route.permission)
            call = _Call(
                method, path, path_id, params, request_id, idempotency_key, _is_live(key)
            )
            if method != "POST" or not idempotency_key:
                return self._run(route, call)
            return self._run_idempotent(key, route, call)

    def _run(self, route: _Route, call: _Call) -> _Response:
        _reject_unknown(call.params, route.params)
        return _Response(200, route.handler(self, call))

    def _run_idempotent(self, key: str, route: _Route, call: _Call) -> _Response:
        assert call.idempotency_key is not None
        fingerprint = (call.path, json.dumps(call.params, sort_keys=True))
        previous = self._replays.get((key, call.idempotency_key))
        if previous is not None:
            if previous[0] != fingerprint:
                raise ApiError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they "
                    "were first used with. Try using a key other than "
                    f"'{call.idempotency_key}' if you meant to execute a different request.",
                    type="idempotency_error",
                )
            replay = previous[1]
            return _Response(replay.status, replay.body, {
                "Idempotent-Replayed": "true", "Original-Request": replay.headers["Request-Id"],
            })
        response = self._run(route, call)
        response.headers["Request-Id"] = call.request_id
        # Like Stripe, only a request that ran (not one rejected by validation) is remembered.
        self._replays[(key, call.idempotency_key)] = (fingerprint, response)
        return response

    def _raise_fault(self, path: str) -> None:
        for i, fault in enumerate(self._faults):
            if fault.matches(path):
                del self._faults[i]
                raise _fault_error(fault.status)

    def _authenticate(self, authorization: str | None) -> str:
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.",
                headers={"WWW-Authenticate": 'Bearer realm="Stripe"'},
            )
        key = key.strip()
        if key not in self._keys:
            raise ApiError(
                401,
                f"Invalid API Key provided: {_masked_key(key)}",
                headers={"WWW-Authenticate": 'Bearer realm="Stripe"'},
            )
        return key

    def _authorize(self, key: str, permission: str) -> None:
        if permission not in self._keys[key]:
            resource, _, access = permission.partition(":")
            raise ApiError(
                403,
                f"The provided key '{_masked_key(key)}' does not have the required permissions "
                f"for this endpoint on account 'acct_fake'. Having the "
                f"'rak_{resource.rstrip('s')}_{access}' permission would allow this request to "
                "continue.",
            )

    # -- endpoint handlers (run under the lock) ----------------------------------------------------

    def _get_payment_intent(self, call: _Call) -> dict[str, Any]:
        return copy.deepcopy(
            self._find("payment_intent", self._payment_intents, call.path_id, call)
        )

    def _list_payment_intents(self, call: _Call) -> dict[str, Any]:
        return self._list(list(self._payment_intents.values()), call, "/v1/payment_intents")

    def _create_payment_intent(self, call: _Call) -> dict[str, Any]:
        p = call.params
        amount = _positive_int(_required(p, "amount"), "amount")
        currency = _currency(_required(p, "currency"))
        metadata = p.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ApiError(400, "Invalid object", param="metadata", code="parameter_invalid_empty")
        status = p.get("test_status") or (
            "succeeded" if p.get("confirm") == "true" else "requires_payment_method"
        )
        if status not in PAYMENT_INTENT_STATUSES:
            raise ApiError(400, f"Invalid status: {status}", param="test_status")
        intent = self._new_payment_intent(amount, currency, metadata, None)
        for optional in ("description", "receipt_email", "customer"):
            intent[optional] = p.get(optional, intent.get(optional))
        self._enter_status(intent, status, call, at=intent["created"])
        return copy.deepcopy(intent)

    def _list_events(self, call: _Call) -> dict[str, Any]:
        types = _event_types(call.params)
        events = [e for e in self._events.values() if types is None or _type_matches(e, types)]
        return self._list(events, call, "/v1/events")

    def _create_refund(self, call: _Call) -> dict[str, Any]:
        charge = self._refundable_charge(call)
        if charge["refunded"]:
            raise ApiError(
                400, f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        remaining = charge["amount"] - charge["amount_refunded"]
        amount = _positive_int(call.params.get("amount", remaining), "amount")
        if amount > remaining:
            raise ApiError(
                400,
                f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                f"({remaining})",
                param="amount",
                code="amount_too_large",
            )
        return copy.deepcopy(self._refund(charge, amount, call))

    def _list_webhook_endpoints(self, call: _Call) -> dict[str, Any]:
        return self._list(list(self._webhook_endpoints.values()), call, "/v1/webhook_endpoints")

    def _get_charge(self, call: _Call) -> dict[str, Any]:
        return copy.deepcopy(self._find("charge", self._charges, call.path_id, call))

    def _get_balance(self, call: _Call) -> dict[str, Any]:
        totals: dict[str, int] = {}
        for charge in self._charges.values():
            net = charge["amount"] - charge["amount_refunded"]
            totals[charge["currency"]] = totals.get(charge["currency"], 0) + net
        available = [
            {"amount": amount, "currency": currency, "source_types": {"card": amount}}
            for currency, amount in sorted(totals.items())
        ] or [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}]
        pending = [{**a, "amount": 0, "source_types": {"card": 0}} for a in available]
        return {
            "object": "balance", "available": available, "pending": pending, "livemode": False
        }

    # -- model -------------------------------------------------------------------------------------

    def _new_payment_intent(
        self, amount: int, currency: str, metadata: dict[str, str], created: int | None
    ) -> dict[str, Any]:
        intent_id = _new_id("pi_")
        intent: dict[str, Any] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"{intent_id}_secret_{_new_id('')}",
            "confirmation_method": "automatic",
            "created": created if created is not None else int(time.time()),
            "currency": currency.lower(),
            "customer": None,
            "description": None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": dict(metadata),
            "next_action": None,
            "payment_method": None,
            "payment_method_types": ["card"],
            "receipt_email": None,
            "status": "requires_payment_method",
        }
        self._store(self._payment_intents, intent)
        self._record_event("payment_intent.created", intent, None, intent["created"])
        return intent

    def _enter_status(
        self, intent: dict[str, Any], status: str, request: _Call | None, at: int
    ) -> None:
        failed = status == "requires_payment_method" and intent["status"] in (
            "processing", "requires_confirmation", "requires_action",
        )
        intent["status"] = status
        if status == "succeeded" and intent["latest_charge"] is None:
            self._charge(intent, request, at)
        if status == "canceled":
            intent["canceled_at"] = at
        if failed:
            intent["last_payment_error"] = {
                "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
                "message": "Your card was declined.",
            }
            self._record_event("payment_intent.payment_failed", intent, request, at)
        if status in _STATUS_EVENTS:
            self._record_event(_STATUS_EVENTS[status], intent, request, at)

    def _charge(self, intent: dict[str, Any], request: _Call | None, at: int) -> None:
        charge = {
            "id": _new_id("ch_"),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"],
            "amount_refunded": 0,
            "captured": True,
            "created": at,
            "currency": intent["currency"],
            "livemode": False,
            "metadata": dict(intent["metadata"]),
            "paid": True,
            "payment_intent": intent["id"],
            "refunded": False,
            "status": "succeeded",
        }
        self._store(self._charges, charge)
        intent["latest_charge"] = charge["id"]
        intent["amount_received"] = intent["amount"]
        intent["payment_method"] = intent["payment_method"] or "pm_card_visa"
        self._record_event("charge.succeeded", charge, request, at)

    def _refundable_charge(self, call: _Call) -> dict[str, Any]:
        params = call.params
        if params.get("charge"):
            return self._find("charge", self._charges, params["charge"], call, param="charge")
        if not params.get("payment_intent"):
            raise ApiError(
                400,
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        intent = self._find(
            "payment_intent", self._payment_intents, params["payment_intent"], call,
            param="payment_intent",
        )
        if intent["latest_charge"] is None:
            raise ApiError(
                400,
                f"This PaymentIntent ({intent['id']}) does not have a successful charge to "
                "refund.",
                param="payment_intent",
            )
        return self._charges[intent["latest_charge"]]

    def _refund(self, charge: dict[str, Any], amount: int, call: _Call) -> dict[str, Any]:
        refund = {
            "id": _new_id("re_"),
            "object": "refund",
            "amount": amount,
            "charge": charge["id"],
            "created": int(time.time()),
            "currency": charge["currency"],
            "metadata": dict(call.params.get("metadata") or {}),
            "payment_intent": charge["payment_intent"],
            "reason": call.params.get("reason"),
            "status": "succeeded",
        }
        self._store(self._refunds, refund)
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        self._record_event("refund.created", refund, call, refund["created"])
        self._record_event("charge.refunded", charge, call, refund["created"])
        return refund

    def _new_webhook_endpoint(self, url: str, enabled_events: tuple[str, ...], status: str) -> dict[str, Any]:
        endpoint = {
            "id": _new_id("we_"),
            "object": "webhook_endpoint",
            "api_version": None,
            "application": None,
            "created": int(time.time()),
            "description": None,
            "enabled_events": list(enabled_events),
            "livemode": False,
            "metadata": {},
            "status": status,
            "url": url,
        }
        self._store(self._webhook_endpoints, endpoint)
        return endpoint

    def _store(self, table: dict[str, dict[str, Any]], obj: dict[str, Any]) -> None:
        self._order[obj["id"]] = len(self._order)
        table[obj["id"]] = obj

    def _find(
        self, kind: str, table: dict[str, dict[str, Any]], obj_id: str | None, call: _Call,
        param: str | None = None,
    ) -> dict[str, Any]:
        # Missing objects named in the URL are 404; named in a parameter, 400 with that param.
        if obj_id is None or obj_id not in table or call.livemode:
            message = f"No such {kind}: '{obj_id}'"
            if obj_id in table:
                # Stripe's hint when the key's mode does not match the object's.
                message += ("; a similar object exists in test mode, but a live mode key was "
                            "used to make this request.")
            raise ApiError(
                400 if param else 404, message, code="resource_missing", param=param or "id"
            )
        return table[obj_id]

    def _record_event(
        self, event_type: str, obj: dict[str, Any], request: _Call | None, at: int
    ) -> None:
        self._store(self._events, self._build_event(event_type, obj, request, created=at))

    def _build_event(
        self, event_type: str, obj: dict[str, Any], request: _Call | None, created: int
    ) -> dict[str, Any]:
        return {
            "id": _new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {
                "id": request.request_id if request else None,
                "idempotency_key": request.idempotency_key if request else None,
            },
            "type": event_type,
        }

    # -- lists -------------------------------------------------------------------------------------

    def _newest_first(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(objects, key=lambda o: (o["created"], self._order[o["id"]]), reverse=True)

    def _list(self, objects: list[dict[str, Any]], call: _Call, url: str) -> dict[str, Any]:
        p = call.params
        limit = _limit(p.get("limit"))
        if call.livemode:
            objects = []
        matching = self._newest_first([o for o in objects if _created_matches(o, p.get("created"))])
        if p.get("starting_after") and p.get("ending_before"):
            raise ApiError(
                400,
                "You may only specify one of these parameters: ending_before, starting_after.",
            )
        if p.get("ending_before"):
            end = _cursor(matching, p["ending_before"], "ending_before")
            page = matching[max(end - limit, 0):end]
            has_more = end - limit > 0
        else:
            start = 0
            if p.get("starting_after"):
                start = _cursor(matching, p["starting_after"], "starting_after") + 1
            page = matching[start:start + limit]
            has_more = start + limit < len(matching)
        return {"object": "list", "data": copy.deepcopy(page), "has_more": has_more, "url": url}


# -- routing ---------------------------------------------------------------------------------------

_LIST = frozenset({"limit", "starting_after", "ending_before", "created", "expand"})

_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "/v1/payment_intents/{id}"): _Route(
        FakeStripeServer._get_payment_intent, "payment_intents:read", frozenset({"expand"})
    ),
    ("GET", "/v1/payment_intents"): _Route(
        FakeStripeServer._list_payment_intents, "payment_intents:read", _LIST | {"customer"}
    ),
    ("POST", "/v1/payment_intents"): _Route(
        FakeStripeServer._create_payment_intent,
        "payment_intents:write",
        frozenset(
            {"amount", "currency", "metadata", "confirm", "payment_method", "description",
             "receipt_email", "customer", "payment_method_types", "automatic_payment_methods",
             "expand", "test_status"}
        ),
    ),
    ("GET", "/v1/events"): _Route(
        FakeStripeServer._list_events, "events:read", _LIST | {"type", "types"}
    ),
    ("POST", "/v1/refunds"): _Route(
        FakeStripeServer._create_refund,
        "refunds:write",
        frozenset({"payment_intent", "charge", "amount", "reason", "metadata", "expand"}),
    ),
    ("GET", "/v1/charges/{id}"): _Route(
        FakeStripeServer._get_charge, "charges:read", frozenset({"expand"})
    ),
    ("GET", "/v1/balance"): _Route(FakeStripeServer._get_balance, "balance:read", frozenset()),
    ("GET", "/v1/webhook_endpoints"): _Route(
        FakeStripeServer._list_webhook_endpoints, "webhook_endpoints:read", _LIST - {"created"}
    ),
}


def _route(method: str, path: str) -> tuple[_Route, str | None]:
    parts = path.rstrip("/").split("/")
    path_id = parts[3] if len(parts) == 4 else None
    pattern = "/".join(parts[:3] + ["{id}"]) if path_id else "/".join(parts)
    route = _ROUTES.get((method, pattern))
    if route is None:
        raise ApiError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or "
            "we can help at https://support.stripe.com/.",
        )
    return route, path_id


def _make_handler(server: FakeStripeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the library's requests.Session expects

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def do_DELETE(self) -> None:
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            response = server._serve(self.command, self.path, body, self.headers)
            if response is None:
                self.close_connection = True
                return
            self._send(response)

        def _send(self, response: _Response) -> None:
            payload = json.dumps(response.body, indent=2).encode()
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or API_VERSION)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("fake stripe: " + format, *args)

    return Handler


def _check_status(status: str) -> None:
    if status not in PAYMENT_INTENT_STATUSES:
        raise ValueError(f"not a PaymentIntent status: {status!r}")


# -- faults ----------------------------------------------------------------------------------------

def _fault_error(status: int) -> ApiError:
    if status == 429:
        return ApiError(
            429,
            "Request rate limit exceeded. You can learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
            headers={"Retry-After": "1", "Stripe-Should-Retry": "true"},
        )
    if status >= 500:
        return ApiError(
            status,
            "An unknown error occurred",
            type="api_error",
            headers={"Stripe-Should-Retry": "true"} if status == 503 else {},
        )
    if status == 401:
        return ApiError(401, "Invalid API Key provided: sk_test_****************0000")
    if status == 404:
        return ApiError(404, "No such object", code="resource_missing", param="id")
    return ApiError(status, f"Injected error ({status})")


# -- parameters ------------------------------------------------------------------------------------

def _decode_params(encoded: str) -> dict[str, Any]:
    """Stripe's bracket notation to nested dicts and lists: a[b]=1&c[0]=x -> {a: {b: 1}, c: [x]}."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(encoded, keep_blank_values=True):
        name, _, rest = key.partition("[")
        path = [name] + list(rest.rstrip("]").split("][")) if rest else [name]
        node = root
        for part in path[:-1]:
            node = node.setdefault(part or str(len(node)), {})
        last = path[-1]
        node[last or str(len(node))] = value
    return _lists_from_indexed(root)


def _lists_from_indexed(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists_from_indexed(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def _reject_unknown(params: dict[str, Any], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise ApiError(
                400, f"Received unknown parameter: {name}", param=name,
                code="parameter_unknown",
            )


def _required(params: dict[str, Any], name: str) -> Any:
    if params.get(name) in (None, ""):
        raise ApiError(
            400, f"Missing required param: {name}.", param=name, code="parameter_missing"
        )
    return params[name]


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(
            400, f"Invalid integer: {value}", param=name, code="parameter_invalid_integer"
        ) from None
    if number < 1:
        raise ApiError(
            400, "This value must be greater than or equal to 1.", param=name,
            code="parameter_invalid_integer",
        )
    return number


def _currency(value: Any) -> str:
    if not (isinstance(value, str) and len(value) == 3 and value.isalpha()):
        raise ApiError(400, f"Invalid currency: {value}", param="currency")
    return value.lower()


def _limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    limit = _positive_int(value, "limit")
    if limit > MAX_LIMIT:
        raise ApiError(
            400, f"This value must be less than or equal to {MAX_LIMIT}.", param="limit",
            code="parameter_invalid_integer",
        )
    return limit


def _created_matches(obj: dict[str, Any], created: Any) -> bool:
    if created is None:
        return True
    if not isinstance(created, dict):
        return obj["created"] == _timestamp(created, "created")
    tests = {
        "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
    }
    for op, bound in created.items():
        if op not in tests:
            raise ApiError(400, f"Received unknown parameter: created[{op}]",
                           param=f"created[{op}]", code="parameter_unknown")
        if not tests[op](obj["created"], _timestamp(bound, f"created[{op}]")):
            return False
    return True


def _timestamp(value: Any, param: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(
            400, f"Invalid integer: {value}", param=param, code="parameter_invalid_integer"
        ) from None


def _cursor(objects: list[dict[str, Any]], cursor_id: str, param: str) -> int:
    for i, obj in enumerate(objects):
        if obj["id"] == cursor_id:
            return i
    raise ApiError(400, f"No such object: '{cursor_id}'", param=param, code="resource_missing")


def _event_types(params: dict[str, Any]) -> list[str] | None:
    if params.get("type") and params.get("types"):
        raise ApiError(400, "You may only specify one of these parameters: type, types.")
    if params.get("type"):
        return [params["type"]]
    types = params.get("types")
    return list(types) if types else None


def _type_matches(event: dict[str, Any], types: list[str]) -> bool:
    # Stripe accepts one trailing wildcard: `payment_intent.*`.
    return any(
        event["type"] == t or (t.endswith(".*") and event["type"].startswith(t[:-1]))
        for t in types
    )


__all__ = [
    "ALL_PERMISSIONS",
    "ApiError",
    "FakeStripeServer",
    "RecordedRequest",
    "WebhookSignature",
]
