"""An in-process OTLP/HTTP trace receiver: what a collector is to `OTEL_TRACES_EXPORTER=otlp`.

`POST /v1/traces` takes an `ExportTraceServiceRequest` in protobuf (gzip or deflate compressed, or
not), as OTLP/HTTP specifies, decodes it with opentelemetry-proto and keeps every span, answering
200 with an `ExportTraceServiceResponse`. Anything else is refused as a collector refuses it: 404
for another path, 415 for JSON or another content type, 400 for a body that does not decode.
Point a process at it with `OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url`.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PROTOBUF = "application/x-protobuf"
KINDS = {Span.SPAN_KIND_INTERNAL: "internal", Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
         Span.SPAN_KIND_PRODUCER: "producer", Span.SPAN_KIND_CONSUMER: "consumer"}


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the exporter sent it; ids in W3C hex, `parent_span_id` "" for a root."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    attributes: Mapping[str, Any]
    status: str  # unset, ok, error
    status_message: str
    links: tuple[Link, ...]
    resource: Mapping[str, Any]
    scope: str

    @property
    def failed(self) -> bool:
        return self.status == "error"


class OtlpReceiver:
    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._post(self)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        """OTEL_EXPORTER_OTLP_ENDPOINT: the base URL; the exporter adds /v1/traces."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans() if span.trace_id == trace_id]

    def _post(self, request: BaseHTTPRequestHandler) -> None:
        if request.path != "/v1/traces":
            return _answer(request, 404, b"not found", "text/plain")
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length)
        if request.headers.get("Content-Type", "").split(";")[0].strip() != PROTOBUF:
            return _answer(request, 415, b"only application/x-protobuf here", "text/plain")
        try:
            body = _decompressed(body, request.headers.get("Content-Encoding", ""))
            export = ExportTraceServiceRequest.FromString(body)
        except (OSError, zlib.error, DecodeError) as error:
            return _answer(request, 400, str(error).encode(), "text/plain")
        received = list(_spans(export))
        with self._lock:
            self._spans.extend(received)
            self.requests += 1
        _answer(request, 200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)


def _answer(request: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str) -> None:
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


def _decompressed(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _spans(export: ExportTraceServiceRequest) -> Any:
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    kind=KINDS.get(span.kind, "unspecified"),
                    attributes=_attributes(span.attributes),
                    status={Status.STATUS_CODE_OK: "ok", Status.STATUS_CODE_ERROR: "error"}.get(span.status.code, "unset"),
                    status_message=span.status.message,
                    links=tuple(Link(link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))
                                for link in span.links),
                    resource=resource,
                    scope=scope_spans.scope.name,
                )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None
