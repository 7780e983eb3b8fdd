"""An HTTP proxy in front of moto's S3 server that answers some requests itself, as S3 would fail.

The daemons' `S3_ENDPOINT_URL` points here. Requests are forwarded to moto byte for byte (headers,
body, status), except while a fault is switched on: then a share of them get S3's own error
response instead (`AccessDenied` 403, `InternalError` 500, `SlowDown` 503) with S3's XML body and
`x-amz-request-id` header, so boto3 parses and classifies them exactly as it would real ones. A fault
may be narrowed to some methods or to paths holding a string, as a policy that denies only some
actions or keys would be.

    proxy = S3FaultProxy(moto_endpoint).start()
    proxy.set_fault(403, share=1.0)   # credentials revoked: every request is denied
    proxy.set_fault(403, methods=WRITES)   # write permission removed: reads still pass
    proxy.set_fault(403, methods=WRITES, path_contains="/orders/")   # writes under orders/ only
    proxy.set_fault(500, share=0.3)   # S3 having a bad day: 3 requests in 10 fail
    proxy.clear()
"""

from __future__ import annotations

import http.client
import random
import secrets
import threading
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Hop-by-hop headers are the proxy's own business; everything else passes through untouched.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-connection", "proxy-authenticate", "proxy-authorization"})

# What s3:PutObject and s3:DeleteObject govern (a copy is a PUT, a multi-object delete a POST).
WRITES = frozenset({"PUT", "POST", "DELETE"})

_ERRORS = {
    403: ("AccessDenied", "Access Denied"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


@dataclass(frozen=True)
class _Fault:
    status: int
    share: float
    methods: frozenset[str] | None  # None: every method
    path_contains: str | None  # None: every path

    def applies_to(self, method: str, path: str) -> bool:
        return ((self.methods is None or method in self.methods)
                and (self.path_contains is None or self.path_contains in path))


class S3FaultProxy:
    """A thread-safe forwarding proxy on 127.0.0.1 with switchable S3 faults."""

    def __init__(self, upstream: str, seed: int = 8) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._random = random.Random(seed)
        self.injected: Counter[int] = Counter()  # status -> faults answered
        self.forwarded = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="s3-fault-proxy", daemon=True)

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def set_fault(self, status: int, share: float = 1.0, *, methods: Collection[str] | None = None,
                  path_contains: str | None = None) -> None:
        """Answer `share` of the requests (those with one of `methods` and a path holding
        `path_contains`, when given) with S3's error for `status`."""
        if status not in _ERRORS:
            raise ValueError(f"no S3 error body for status {status}")
        with self._lock:
            self._fault = _Fault(status, share, frozenset(methods) if methods is not None else None,
                                 path_contains)

    def clear(self) -> None:
        with self._lock:
            self._fault = None

    def fault_for(self, method: str, path: str) -> int | None:
        """The error status to answer this request with, or None to forward it."""
        with self._lock:
            fault = self._fault
            if fault is None or not fault.applies_to(method, path) or self._random.random() >= fault.share:
                self.forwarded += 1
                return None
            self.injected[fault.status] += 1
            return fault.status


def error_body(status: int, path: str) -> tuple[bytes, str]:
    """S3's XML error document for `status`, and the request id it carries."""
    code, message = _ERRORS[status]
    request_id = secrets.token_hex(8).upper()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
            f"</Message><Resource>{path}</Resource><RequestId>{request_id}</RequestId></Error>")
    return body.encode(), request_id


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], proxy: S3FaultProxy) -> None:
        super().__init__(address, handler)
        self.proxy = proxy

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a daemon killed mid-request leaves a broken connection: that is the test, not a fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects of S3
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        body = self._read_body()
        status = self.server.proxy.fault_for(self.command, self.path)
        if status is not None:
            self._answer_fault(status)
        else:
            self._forward(body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _answer_fault(self, status: int) -> None:
        body, request_id = error_body(status, self.path)
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":  # S3 answers HEAD with the status alone
            self.wfile.write(body)

    def _forward(self, body: bytes) -> None:
        proxy = self.server.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP | {"content-length", "server", "date"}:
                    self.send_header(name, value)
            # HEAD carries the object's length without its bytes; everything else, what we read.
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass
