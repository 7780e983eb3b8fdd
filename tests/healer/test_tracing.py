"""Traces as an operator's collector receives them: `healer run` processes with
OTEL_TRACES_EXPORTER=otlp send OTLP/HTTP to a real receiver (tests/fakes/otlp_receiver.py, which
decodes the protobuf with opentelemetry-proto), completing real orders against PostgreSQL, moto S3
and the SendGrid and Stripe servers. One trace per completion attempt, from its steps down to the
S3, Stripe and SendGrid calls and the render in its render process; a failed step's error class; a
webhook's and a reconciliation's links to the order's trace; the trace id as an exemplar of the
completion latency in OpenMetrics. `console` prints spans; unset, nothing of the SDK is set up."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from sqlalchemy import select

from healer import tracing
from healer.db.models import ReconcileRun
from healer.render.pool import RenderPool
from healer.worker import Worker
from tests.e2e.daemon import REPO, RunningDaemon, healer_env, running_daemon
from tests.eventually import Unmet, eventually
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop
from tests.healer.test_logs import json_lines

STEPS = ("verify_payment", "migrate_files", "render", "email")
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def traced_env(shop_env: dict[str, str], receiver: OtlpReceiver, **overrides: str) -> dict[str, str]:
    return healer_env(shop_env, OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                      OTEL_SERVICE_NAME="healer-e2e", OTEL_BSP_SCHEDULE_DELAY="100", HEALER_LOG_FORMAT="json",
                      HEALER_RETRY_BASE_SECONDS="0", **overrides)


@pytest.fixture
def daemon(shop: Shop, shop_env: dict[str, str], receiver: OtlpReceiver, tmp_path: Path) -> Iterator[RunningDaemon]:
    with running_daemon(traced_env(shop_env, receiver), tmp_path / "daemon.log") as running:
        reconciled_at_start(shop)
        yield running


def attempt_of(receiver: OtlpReceiver, trace_id: str, steps: tuple[str, ...] = STEPS) -> list[ReceivedSpan]:
    """The attempt's spans once its root, its steps and their render-process span have arrived."""

    def arrived() -> list[ReceivedSpan] | Unmet:
        spans = receiver.trace(trace_id)
        names = [s.name for s in spans]
        complete = "order.complete" in names and all(n in names for n in steps)
        rendered = "render" not in steps or names.count("render") == 2  # the step's and the process's
        return spans if complete and rendered else Unmet(sorted(names))

    spans = eventually(arrived, timeout=30, what=f"the spans of trace {trace_id}")
    assert isinstance(spans, list)
    return spans


def reconciled_at_start(shop: Shop) -> None:
    """Until the daemon's first reconciliation with Stripe has finished. A payment made while that
    run lists them is found by it, and the order marked paid in the run's own trace (no worker), as
    the webhook would have: a right answer, but then the worker's attempt has three steps, not four.
    The next run is an interval (5 minutes) away."""
    def finished() -> bool:
        with shop.sessions() as session:
            return session.scalar(select(ReconcileRun.id).where(ReconcileRun.finished_at.is_not(None)).limit(1)) is not None
    eventually(finished, timeout=60, what="the daemon's first reconciliation to finish")


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_a_completed_order_is_one_trace_from_its_steps_down_to_its_calls_and_its_render_process(
    shop: Shop, daemon: RunningDaemon, receiver: OtlpReceiver
) -> None:
    order_id = shop.paid_order()
    eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")

    events = shop.events(order_id)
    assert [(e.step, e.outcome) for e in events] == [(step, "ok") for step in STEPS]
    (trace_id,) = {e.trace_id for e in events}  # every step of the attempt, one trace
    assert trace_id is not None and re.fullmatch(r"[0-9a-f]{32}", trace_id)
    spans = attempt_of(receiver, trace_id)

    [root] = [s for s in spans if s.parent_span_id == ""]
    assert (root.name, root.attributes["order.id"], root.attributes["order.status"]) == (
        "order.complete", str(order_id), "completed")
    steps = {s.name: s for s in children(spans, root) if s.name in STEPS}
    assert sorted(steps) == sorted(STEPS)
    for event in events:  # the story's lines name their step's span
        step = steps[event.step]
        assert event.span_id == step.span_id
        assert (step.attributes["order.id"], step.attributes["order.step"]) == (str(order_id), event.step)
        assert not step.failed and "error.class" not in step.attributes
    calls = {name: [s for s in children(spans, steps[name]) if s.kind == "client"] for name in STEPS}
    assert calls["verify_payment"] and all(s.name == "GET" for s in calls["verify_payment"])  # Stripe, requests
    s3 = {name: {s.attributes.get("rpc.method") for s in calls[name] if s.attributes.get("rpc.service") == "S3"}
          for name in ("migrate_files", "render")}
    assert "CopyObject" in s3["migrate_files"] and {"GetObject", "PutObject"} <= s3["render"], s3
    assert [s.name for s in calls["email"]] == ["POST"]  # SendGrid's mail/send, urllib
    assert any("/v3/mail/send" in str(v) for v in calls["email"][0].attributes.values())
    [rendered] = [s for s in children(spans, steps["render"]) if s.name == "render"]
    assert rendered.attributes["process.pid"] != daemon.process.pid  # made in the render process
    assert {s.resource["service.name"] for s in spans} == {"healer-e2e"}
    # The health checks' own calls (the sendgrid check's ran at start) make no traces.
    assert any(r.path == "/v3/scopes" for r in shop.sendgrid.requests)
    assert [s for s in receiver.spans() if s.kind == "client" and s.parent_span_id == ""] == []

    # The step's log lines name its span.
    records = json_lines(daemon.log())
    [generated] = [r for r in records if r["msg"].startswith(f"PDF generated: pdfs/final_{order_id}.pdf")]
    assert (generated["trace_id"], generated["span_id"]) == (trace_id, steps["render"].span_id)

    # The completion latency points at this trace, in OpenMetrics (Prometheus asks for it); the
    # plain text format has no exemplars and stays as it was.
    status, headers, body = daemon.ops("GET", "/metrics", {"Accept": OPENMETRICS})
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    [bucket] = [line for line in body.decode().splitlines()
                if line.startswith("healer_order_completion_latency_seconds_bucket") and "# {" in line]
    assert f'# {{trace_id="{trace_id}"}}' in bucket
    status, headers, body = daemon.ops("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain") and b"trace_id" not in body

    # A webhook about this order (Stripe delivering the payment again) links to its trace.
    intent = shop.stripe.payment_intent(str(shop.order(order_id).stripe_payment_intent_id))
    body, headers = shop.stripe.webhook_payload("payment_intent.succeeded", intent)
    assert post(daemon.base_url + "/stripe/webhook", body, headers) == 200

    def webhook() -> ReceivedSpan | Unmet:
        found = [s for s in receiver.spans() if s.name == "stripe.webhook"]
        return found[0] if found else Unmet([s.name for s in receiver.spans()])

    span = eventually(webhook, timeout=30, what="the webhook's span")
    assert isinstance(span, ReceivedSpan)
    assert span.trace_id != trace_id
    assert span.attributes["stripe.event.type"] == "payment_intent.succeeded"
    assert span.attributes["order.id"] == str(order_id)
    assert [(link.trace_id, link.span_id, link.attributes["order.id"]) for link in span.links] == [
        (trace_id, steps["email"].span_id, str(order_id))]
    # ...in the trace of its request (FastAPI's own server span).
    request = eventually(lambda: [s for s in receiver.trace(span.trace_id) if s.parent_span_id == ""],
                         timeout=30, what="the webhook request's span")
    assert [(s.name, s.kind, s.attributes["http.route"]) for s in request] == [
        ("POST /stripe/webhook", "server", "/stripe/webhook")]

    # A download link's request is a span too, without the link's token.
    token = str(shop.order(order_id).download_token)
    assert daemon.request("GET", f"/download/{token}")[0] == 307
    download = eventually(lambda: [s for s in receiver.spans() if s.attributes.get("http.route") == "/download/{token}"],
                          timeout=30, what="the download's span")
    assert download[0].attributes["url.path"] == "/download/…"
    assert token not in str([(s.name, s.attributes, s.status_message) for s in receiver.spans()])


def test_a_failed_step_carries_its_error_class_and_the_retry_is_a_trace_of_its_own(
    shop: Shop, daemon: RunningDaemon, receiver: OtlpReceiver
) -> None:
    shop.sendgrid.fail_next(500, path="/v3/mail/send")
    order_id = shop.paid_order()
    eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")

    failed, sent = [e for e in shop.events(order_id) if e.step == "email"]
    assert (failed.outcome, failed.error_class, sent.outcome) == ("failed", "email_transient", "ok")
    assert failed.trace_id is not None and sent.trace_id is not None and failed.trace_id != sent.trace_id
    first = attempt_of(receiver, failed.trace_id)
    [root] = [s for s in first if s.parent_span_id == ""]
    [email] = [s for s in children(first, root) if s.name == "email"]
    assert email.span_id == failed.span_id and email.failed and email.status_message == "email_transient"
    assert email.attributes["error.class"] == "email_transient" == root.attributes["error.class"]
    assert all(not s.failed for s in children(first, root) if s.name != "email")
    retry = attempt_of(receiver, sent.trace_id, steps=("email",))
    [retry_root] = [s for s in retry if s.parent_span_id == ""]
    assert [s.name for s in children(retry, retry_root) if s.kind == "internal"] == ["email"]


def test_an_order_waiting_on_a_failing_check_makes_no_trace_while_it_waits(
    shop: Shop, shop_env: dict[str, str], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    shop.sendgrid.set_key_valid(False)  # the email step waits on the sendgrid check
    env = traced_env(shop_env, receiver, HEALER_CHECK_INTERVAL_SECONDS="1")
    with running_daemon(env, tmp_path / "daemon.log") as daemon:
        eventually(lambda: json.loads(daemon.ops("GET", "/health/sendgrid")[2])["status"] == "failing",
                   timeout=30, what="the sendgrid check to fail")
        reconciled_at_start(shop)
        order_id = shop.paid_order()
        eventually(lambda: (o := shop.order(order_id)).status == "pdf_rendered" and str(o.last_error).startswith("waiting"),
                   timeout=60, what="the order to wait before its email")
        first_wait = shop.order(order_id).next_attempt_at
        eventually(lambda: shop.order(order_id).next_attempt_at != first_wait, timeout=30,
                   what="the worker to look at it again, and wait again")
        shop.sendgrid.set_key_valid(True)
        eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")

        def roots() -> list[ReceivedSpan] | Unmet:
            found = [s for s in receiver.spans()
                     if s.name == "order.complete" and s.attributes["order.id"] == str(order_id)]
            done = any(root.attributes["order.status"] == "completed" for root in found)
            return found if done else Unmet(found)

        # Before the daemon is stopped: the last attempt's spans leave a moment after its commit.
        attempts = eventually(roots, timeout=30, what="the order's traces")
    assert isinstance(attempts, list) and len(attempts) == 2  # what ran, and the email: no trace per wait
    steps = [sorted(s.name for s in children(receiver.trace(root.trace_id), root) if s.kind == "internal")
             for root in sorted(attempts, key=lambda root: len(receiver.trace(root.trace_id)), reverse=True)]
    assert steps == [["migrate_files", "render", "verify_payment"], ["email"]]


def test_a_reconciliation_that_repairs_an_order_links_to_the_orders_trace(
    shop: Shop, shop_env: dict[str, str], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    # The card was declined, so the order gave up at verification; then the customer paid after
    # all, and the webhook never came: reconciliation finds the payment.
    order_id = shop.paid_order(payment_status="requires_payment_method")
    env = traced_env(shop_env, receiver, HEALER_RECONCILE_INTERVAL_SECONDS="1")
    with running_daemon(env, tmp_path / "daemon.log"):
        eventually(lambda: shop.order(order_id).status == "needs_attention", timeout=60, what="it to give up")
        [declined] = shop.events(order_id)
        assert declined.trace_id is not None
        shop.stripe.set_status(str(shop.order(order_id).stripe_payment_intent_id), "succeeded")
        eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")

        def linked() -> ReceivedSpan | Unmet:
            runs = [s for s in receiver.spans() if s.name == "stripe.reconcile"]
            found = [s for s in runs if s.links]
            return found[0] if found else Unmet(len(runs))

        run = eventually(linked, timeout=30, what="the repairing run's span")
    assert isinstance(run, ReceivedSpan)
    assert [(link.trace_id, link.span_id) for link in run.links] == [(declined.trace_id, declined.span_id)]
    assert run.attributes["reconcile.orders_repaired"] == 1
    repaired = [e for e in shop.events(order_id) if e.step == "verify_payment" and e.outcome == "ok"]
    assert [e.trace_id for e in repaired] == [run.trace_id]  # the story's line names the run
    assert any(s.kind == "client" and s.parent_span_id == run.span_id for s in receiver.trace(run.trace_id))


def demo(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("HEALER_", "DATABASE_URL", "S3_", "STRIPE_", "SENDGRID_", "OTEL_"))}
    full = {**base, "HEALER_DATA_DIR": str(tmp_path / "demo"), "HEALER_HTTP_PORT": str(free_port()),
            "HEALER_OPS_PORT": str(free_port()), **env}
    return subprocess.run([sys.executable, "-m", "healer", "demo", "--orders", "1", "--exit-when-done"],
                          env=full, capture_output=True, text=True, timeout=240, cwd=REPO)


def test_the_console_exporter_prints_the_spans(tmp_path: Path) -> None:
    done = demo(tmp_path, OTEL_TRACES_EXPORTER="console")

    assert done.returncode == 0, done.stderr[-3000:]
    names = re.findall(r'^    "name": "([^"]+)",$', done.stdout, re.MULTILINE)
    # The render process prints its own span: two `render`s, the step's and the process's.
    assert sorted(names) == ["email", "migrate_files", "order.complete", "render", "render"], done.stdout[-3000:]
    assert "tracing to console (OTEL_TRACES_EXPORTER)" in done.stderr


def test_without_an_exporter_nothing_of_the_sdk_is_set_up_and_nothing_is_sent(
    shop: Shop, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    # A daemon with an endpoint but no exporter named: it sends nothing, anywhere.
    done = demo(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url)
    assert done.returncode == 0 and "tracing" not in done.stderr, done.stderr[-3000:]
    assert receiver.requests == 0
    # What the daemon imports to start, with no OTEL_* set: no SDK, no instrumentation.
    probe = ("import sys; from healer import daemon, tracing; assert tracing.start() is None; "
             "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.instrumentation'))))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    imported = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "[]", imported.stdout + imported.stderr

    # An order run here, through the render process pool, on the API alone.
    assert tracing.start({}) is None
    order_id = shop.paid_order()
    pool = RenderPool(shop.assets_dir, 1, tmp_path / "scratch")
    worker = Worker(shop.pipeline(render=pool), concurrency=1)
    try:
        eventually(lambda: shop.order(order_id).status == "completed", timeout=60, step=worker.tick,
                   what="the order to complete")
    finally:
        worker.shutdown()
        pool.shutdown()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # none was ever set
    assert [e.trace_id for e in shop.events(order_id)] == [None] * 4
    assert shop.results[-1].trace_id is None
    assert not [t.name for t in threading.enumerate() if "otel" in t.name.lower() or "span" in t.name.lower()]
    print(f"\nno-op spans: {_noop_span_cost_ns():.0f} ns per order.complete + step pair (tracing off)")


def _noop_span_cost_ns(rounds: int = 20000) -> float:
    """What an attempt's two spans cost with tracing off (the API's no-op), against an empty loop:
    printed, not asserted (a timing is no test). A step takes milliseconds to seconds."""
    tracer = trace.get_tracer("bench")
    started = time.perf_counter_ns()
    for _ in range(rounds):
        with tracer.start_as_current_span("order.complete"), tracer.start_as_current_span("render"):
            pass
    spans = time.perf_counter_ns() - started
    started = time.perf_counter_ns()
    for _ in range(rounds):
        pass
    return (spans - (time.perf_counter_ns() - started)) / rounds


@pytest.mark.parametrize(("env", "names"), [
    ({}, ()),
    ({"OTEL_TRACES_EXPORTER": "none"}, ()),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
    ({"OTEL_TRACES_EXPORTER": " OTLP , console "}, ("otlp", "console")),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ("otlp",)),
])
def test_the_exporter_is_what_otel_traces_exporter_names(env: dict[str, str], names: tuple[str, ...]) -> None:
    assert tracing.exporter_names(env) == names


@pytest.mark.parametrize(("env", "line"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"},
     "OTEL_TRACES_EXPORTER='zipkin': healer exports traces to console or otlp (or none), not zipkin"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "OTEL_EXPORTER_OTLP_PROTOCOL='grpc': healer exports OTLP over HTTP only (http/protobuf); "
     "unset it or point it at an OTLP/HTTP endpoint"),
])
def test_an_exporter_healer_cannot_honour_stops_the_daemon_with_one_line(
    env: dict[str, str], line: str, shop_env: dict[str, str]
) -> None:
    with pytest.raises(tracing.TracingError) as raised:
        tracing.exporter_names(env)
    assert str(raised.value) == line
    run = subprocess.run([sys.executable, "-m", "healer", "run"], env=healer_env(shop_env, **env),
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (run.returncode, run.stderr.splitlines()) == (78, [f"healer: {line}"])
