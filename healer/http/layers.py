"""What wraps every route of both listeners, outermost first: HEAD as GET, the request count, the
answers to errors. The order matters: the count must see the route the router matched (so it runs
inside `HeadAsGet`, which hands the router a copy of the scope) and the 500 that `Unexpected`
answered (so it runs outside it)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from healer.http.errors import install_error_handlers
from healer.http.head import HeadAsGet
from healer.http.observe import CountRequests, HttpMetrics


def install_layers(app: FastAPI, listener: str, metrics: HttpMetrics | None) -> None:
    install_error_handlers(app)  # Starlette adds middleware outside what was added before
    if metrics is not None:
        app.add_middleware(CountRequests, metrics=metrics, listener=listener)
    app.add_middleware(HeadAsGet)


def native_telemetry(*, server_spans: bool) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry, cut to what healer does not already have. Its metrics and logs
    would repeat the request metrics and access log above without their redaction (its logs
    record exception messages as they are); its per-operation spans add nothing to an order's
    trace. Server spans are kept where a request starts work worth tracing (the public listener:
    a webhook's span hangs under its request's); probes and scrapes would be a trace each."""
    return {"tracing": server_spans, "metrics": False, "logs": False, "operation_spans": False}
