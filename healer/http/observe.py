"""Every request answered, observed once: counted in `healer_http_requests_total{listener,route,code}`
and `healer_http_request_duration_seconds{listener,route}`, and logged in one line on the
`healer.http.access` logger (uvicorn's own access log is off, so there is one line per request).

The route label is the route's template (`/download/{token}`), never the path: paths carry order
ids and download tokens, and a label per token would grow without bound. Requests no route
matched share `unmatched`. A 500 here is what `healer.http.errors` answered for an unexpected
error, so an alert on `code="500"` sees every one of them.

The log line does show the path, because an operator tracing one request needs it, but a path
parameter whose name says it is a secret (the download link's `{token}`) is shown as `…`, so a
log reader cannot download a customer's poster; so is a query value under such a name. The path
of a request no route matched says nothing about which part of it is secret (a download link with
a trailing slash is one), so only its first segment is shown. Method, route, status and timing are
also fields of the record (`extra`), for a structured formatter to index. A HEAD request is logged
as HEAD, although healer.http.head runs it as a GET before it gets here.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import parse_qsl, quote

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healer.http.head import ORIGINAL_METHOD

access_log = logging.getLogger("healer.http.access")

# Probes answer in milliseconds; a download waits on one S3 HEAD; a complete on Stripe (~seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
UNMATCHED = "unmatched"
REDACTED = "…"
# Names of path and query parameters whose values are credentials.
SECRET_NAME = re.compile(r"token|secret|session|key|signature|password|auth|code", re.IGNORECASE)
# A scanner's megabyte of path is not worth a megabyte of log per request.
MAX_SHOWN = 200


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "healer_http_requests_total", "HTTP requests answered, by listener, route and status code.",
            ["listener", "route", "code"], registry=registry)
        self.duration = Histogram(
            "healer_http_request_duration_seconds", "Time to answer an HTTP request, by listener and route.",
            ["listener", "route"], buckets=DURATION_BUCKETS, registry=registry)


class CountRequests:
    """ASGI middleware: one count, one duration and one access-log line per answered request, all
    from the same status and clock, so that the log and the metrics never disagree."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, listener: str) -> None:
        self.app = app
        self.metrics = metrics
        self.listener = listener
        # (route, status) -> its count and duration series: looked up once, not per request (a
        # child's lookup takes the metric's lock and builds its label tuple). As bounded as the
        # metrics themselves: routes are templates, and statuses few.
        self._series: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # what the client gets if the app ends without answering
        size = 0

        async def noting_status(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            # The router writes the matched route into the scope it was given.
            route = str(getattr(scope.get("route"), "path", UNMATCHED))
            seconds = time.monotonic() - started
            count, duration = self._series.get((route, status)) or self._labelled(route, status)
            count.inc()
            duration.observe(seconds)
            log_access(self.listener, scope, route, status, seconds, size)

    def _labelled(self, route: str, status: int) -> tuple[Counter, Histogram]:
        series = self._series[route, status] = (self.metrics.requests.labels(self.listener, route, str(status)),
                                                self.metrics.duration.labels(self.listener, route))
        return series


def log_access(listener: str, scope: Scope, route: str, status: int, seconds: float, size: int) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return  # the redacted target and the fields would be built for nothing
    client = scope.get("client")
    fields: dict[str, Any] = {
        "listener": listener, "client": client[0] if client else "-", "method": scope.get(ORIGINAL_METHOD, scope["method"]),
        "route": route, "status": status, "duration_ms": round(seconds * 1000, 1), "response_bytes": size,
    }
    access_log.info('%s %s "%s %s" %d %.1f ms %d B', listener, fields["client"], fields["method"],
                    shown_target(scope), status, fields["duration_ms"], size, extra=fields)


def shown_target(scope: Scope) -> str:
    """The request's path and query as the log shows them: secrets out, one line, bounded."""
    path, query = str(scope.get("path", "")), bytes(scope.get("query_string", b"")).decode("latin-1")
    regex: re.Pattern[str] | None = getattr(scope.get("route"), "path_regex", None)
    match = regex.match(path) if regex is not None else None
    if match is None:
        first, slash, rest = path.lstrip("/").partition("/")
        return _bounded(f"/{_quoted(first)}{slash}{REDACTED if rest else ''}{'?' + REDACTED if query else ''}")
    shown = _redacted_path(path, match) + (f"?{_redacted_query(query)}" if query else "")
    return _bounded(shown)


def _redacted_path(path: str, match: re.Match[str]) -> str:
    pieces, end = [], 0
    for name in match.re.groupindex:
        if SECRET_NAME.search(name) and match.group(name) is not None:
            start, stop = match.span(name)
            pieces += [_quoted(path[end:start]), REDACTED]
            end = stop
    return "".join([*pieces, _quoted(path[end:])])


def _redacted_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return "&".join(_quoted(name) if value == "" else
                    f"{_quoted(name)}={REDACTED if SECRET_NAME.search(name) else _quoted(value)}"
                    for name, value in pairs)


def _quoted(text: str) -> str:
    # Percent-encoded as on the wire: a decoded newline or space would break the one-line format.
    return quote(text, safe="/:@!$'()*+,;=")


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + REDACTED
