"""Traces: OpenTelemetry, configured only by the standard OTEL_* variables, or not at all.

Tracing is on when OTEL_TRACES_EXPORTER names an exporter: `console` (spans printed on stdout),
`otlp` (OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT, or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), or both,
comma-separated. Unset, `none`, or with OTEL_SDK_DISABLED=true it is off, and then nothing of the
SDK is imported or started and no client is instrumented: every span healer opens is the API's
no-op one, which costs a context switch. (The SDK's own auto-configuration defaults to `otlp`; a
daemon must not start sending to localhost:4318 because nobody told it not to.) The SDK reads its
other variables itself: endpoint, headers, timeout and compression, OTEL_SERVICE_NAME (healer by
default) and OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*. They are the SDK's
settings, not healer's, so healer.config does not read them.

What is traced:
- one trace per completion attempt (fulfilment.pipeline; an order that only waits on a failing
  check makes none): a root span `order.complete`, a child per step (`verify_payment`,
  `migrate_files`, `render`, `email`) with `order.id`, `order.step` and, when it failed,
  `error.class`; beneath them the calls to S3 (botocore), Stripe (requests) and SendGrid (urllib,
  under python-http-client), instrumented here;
- the render itself, in its render process: the W3C traceparent goes along with the work
  (`carrier`), and the render process opens its `render` span under it (`continued`) and exports
  it itself, through an SDK of its own set up from the same OTEL_* environment it inherits;
- a Stripe webhook (under its HTTP request's span) and a reconciliation run (a root span), each
  linked to the latest trace of every order it touches (span links; healer.stripe).
A call to S3, Stripe or SendGrid outside any of these (a health probe) makes no trace of its own:
one span per probe every few seconds would bury the orders. HTTP requests are spans too, FastAPI's
own (`POST /stripe/webhook`, with the webhook's span beneath): their `url.path` keeps only its first
segment, as the access log does for a path it cannot match, because a download link's path is the
link's secret token; `http.route` names the route.

Each order event written while a span records names that span (fulfilment.recording), and the
completion-latency histogram carries the trace id as an OpenMetrics exemplar (healer.health.metrics).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace

from healer import __version__
from healer.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

EXPORTERS = ("console", "otlp")
OTLP_PROTOCOL = "http/protobuf"  # the one OTLP transport installed (opentelemetry-exporter-otlp-proto-http)
# How long a render process waits, at most, for its span to leave before it answers: its process
# may be stopped right after (a render over its limits), and a lost span is the one worth reading.
RENDER_FLUSH_MILLIS = 1000

HIDDEN = "…"  # what stands for a path or query value a span must not carry
ORDER_ID = "order.id"  # as fulfilment.pipeline names it on an attempt's spans


class TracingError(ConfigurationError):
    """An OTEL_* variable healer cannot honour: one line naming it."""


def exporter_names(env: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters OTEL_TRACES_EXPORTER names; () when tracing is off. Raises TracingError."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    raw = env.get("OTEL_TRACES_EXPORTER", "")
    names = tuple(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TracingError(f"OTEL_TRACES_EXPORTER={raw!r}: healer exports traces to "
                           f"{' or '.join(EXPORTERS)} (or none), not {', '.join(unknown)}")
    if "otlp" in names:
        for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
            protocol = env.get(variable, "").strip()
            if protocol and protocol != OTLP_PROTOCOL:
                raise TracingError(f"{variable}={protocol!r}: healer exports OTLP over HTTP only "
                                   f"({OTLP_PROTOCOL}); unset it or point it at an OTLP/HTTP endpoint")
            if protocol:
                break  # the traces-specific variable wins over the general one
    return names


class Tracing:
    """The SDK as this process set it up; `shutdown` sends what is still queued."""

    def __init__(self, provider: TracerProvider, exporters: Sequence[str]) -> None:
        self.provider = provider
        self.exporters = tuple(exporters)

    def describe(self) -> str:
        """For the start-up banner."""
        return f"tracing to {', '.join(self.exporters)} (OTEL_TRACES_EXPORTER)"

    def flush(self, timeout_millis: int) -> None:
        self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.provider.shutdown()


_started: Tracing | None = None


def start(env: Mapping[str, str] | None = None, *, instrument_clients: bool = True) -> Tracing | None:
    """Set up tracing for this process if the OTEL_* variables ask for it (once: the SDK's tracer
    provider is global); None when they do not, and then nothing is set up at all."""
    global _started
    names = exporter_names(os.environ if env is None else env)
    if not names:
        return None
    if _started is None:
        _started = Tracing(_provider(names), names)
        trace.set_tracer_provider(_started.provider)
        if instrument_clients:
            _instrument(_started.provider)
    return _started


def _provider(names: Sequence[str]) -> TracerProvider:
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "healer"}))  # OTEL_SERVICE_NAME unset
    provider = TracerProvider(resource=resource)
    provider.sampler = _without_stray_clients(provider.sampler)  # the one OTEL_TRACES_SAMPLER names
    provider.add_span_processor(_paths_cut())  # first: before any exporter sees a span
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: the OTEL_EXPORTER_OTLP_* variables


def _without_stray_clients(inner: Sampler) -> Sampler:
    """`inner`, except that a client span (an S3, Stripe or SendGrid call) with no parent is
    dropped: a call outside any traced work is a health probe's, not an order's."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class WithoutStrayClients(Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,  # type: ignore[no-untyped-def]
                          trace_state=None) -> SamplingResult:
            if kind is trace.SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
                return SamplingResult(Decision.DROP)
            return inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"WithoutStrayClients{{{inner.get_description()}}}"

    return WithoutStrayClients()


def _paths_cut() -> SpanProcessor:
    """Cuts a request span's `url.path` to its first segment and hides its query, as it starts."""
    from opentelemetry.sdk.trace import Span, SpanProcessor

    class PathsCut(SpanProcessor):
        def on_start(self, span: Span, parent_context: object = None) -> None:
            attributes = span.attributes or {}
            path = attributes.get("url.path")
            if isinstance(path, str):
                first, slash, rest = path.lstrip("/").partition("/")
                span.set_attribute("url.path", f"/{first}{slash}{HIDDEN if rest else ''}")
            if "url.query" in attributes:
                span.set_attribute("url.query", HIDDEN)

    return PathsCut()


def _instrument(provider: TracerProvider) -> None:
    """Client spans for S3 (boto3 over botocore), Stripe (stripe's RequestsClient over requests)
    and SendGrid (python-http-client over urllib.request)."""
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.urllib import URLLibInstrumentor

    botocore = BotocoreInstrumentor()  # type: ignore[no-untyped-call]
    for instrumentor in (botocore, RequestsInstrumentor(), URLLibInstrumentor()):
        instrumentor.instrument(tracer_provider=provider)


# -- across the render process boundary ---------------------------------------------------------------


def carrier() -> dict[str, str]:
    """The current span as W3C trace context headers (`traceparent`), for work handed to another
    process; empty when there is no span (tracing off), so the other side opens none either."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextmanager
def continued(headers: Mapping[str, str], name: str, attributes: Mapping[str, str | int] | None = None) -> Iterator[None]:
    """A span `name` in this process, under the span in another process that `headers` (from
    `carrier`) name; nothing at all when they name none. For a render process: its tracing is set
    up on first use, from the OTEL_* environment it inherited, and its spans are sent before the
    work's answer goes back."""
    if not headers:
        yield
        return
    tracing = start(instrument_clients=False)  # a render process calls no client
    parent = propagate.extract(dict(headers))
    attrs = {"process.pid": os.getpid(), **(attributes or {})}
    try:
        with trace.get_tracer(__name__).start_as_current_span(name, context=parent, attributes=attrs,
                                                               record_exception=False):
            yield
    finally:
        if tracing is not None:
            tracing.flush(RENDER_FLUSH_MILLIS)


# -- linking a webhook's or a reconciliation's span to the orders it touches --------------------------


def recording() -> bool:
    """Whether the current span records: only then is it worth reading what to link it to."""
    return trace.get_current_span().is_recording()


def link_orders(traces: Mapping[uuid.UUID, tuple[str, str]]) -> None:
    """Link the current span to each order's latest traced span (order id -> (trace id, span id),
    in hex, as fulfilment.recording.latest_traces reads them from the orders' stories)."""
    span = trace.get_current_span()
    for order_id, (trace_id, span_id) in traces.items():
        context = trace.SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
        span.add_link(context, {ORDER_ID: str(order_id)})
