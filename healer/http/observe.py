"""Requests counted per listener, route and status: `healer_http_requests_total{listener,route,code}`
and `healer_http_request_duration_seconds{listener,route}`.

The route label is the route's template (`/download/{token}`), never the path: paths carry order
ids and download tokens, and a label per token would grow without bound. Requests no route
matched share `unmatched`. A 500 here is what `healer.http.errors` answered for an unexpected
error, so an alert on `code="500"` sees every one of them.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Probes answer in milliseconds; a download waits on one S3 HEAD; a complete on Stripe (~seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
UNMATCHED = "unmatched"


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "healer_http_requests_total", "HTTP requests answered, by listener, route and status code.",
            ["listener", "route", "code"], registry=registry)
        self.duration = Histogram(
            "healer_http_request_duration_seconds", "Time to answer an HTTP request, by listener and route.",
            ["listener", "route"], buckets=DURATION_BUCKETS, registry=registry)


class CountRequests:
    """ASGI middleware: one count and one duration per answered request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, listener: str) -> None:
        self.app = app
        self.metrics = metrics
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # what the client gets if the app ends without answering

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            # The router writes the matched route into the scope it was given.
            route = str(getattr(scope.get("route"), "path", UNMATCHED))
            self.metrics.requests.labels(self.listener, route, str(status)).inc()
            self.metrics.duration.labels(self.listener, route).observe(time.monotonic() - started)
