"""The canary (`healer canary`, the scheduled `canary` job): a synthetic order through the real steps
on real peers (PostgreSQL, moto's S3 server, the fake SendGrid and Stripe of tests/fakes, render
processes on a private copy of the assets). It charges nothing, delivers nothing (SendGrid's sandbox
mode), leaves nothing behind, is counted nowhere a customer's order is, and when it fails it names
the phase, the runbook issue and what to do: in its metrics, on the status page, and in the exit
code of `healer canary`."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from checks.base import Status, run_check
from checks.orders import OrdersCheck
from fulfilment.models import Order, OrderEvent, OrderStatus, transaction, utcnow
from fulfilment.templates import list_templates
from healer import orders
from healer.config import Settings
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.jobs.canary import CanaryJob, canary_keys, uploads
from healer.jobs.canary_results import CanaryRun, Phase, PhaseOutcome
from healer.wiring import Services, build_apps, build_canary, rendering
from tests.e2e.daemon import HEALER, REPO
from tests.fakes.shop_fixtures import FROM_EMAIL, Shop

FONT = "fonts/DejaVuSerif-Bold.ttf"  # every template's title


@dataclass
class Canaries:
    job: CanaryJob
    metrics: Metrics
    services: Services
    settings: Settings

    def run(self) -> CanaryRun:
        self.job()
        run = self.job.state().latest
        assert run is not None
        return run

    def samples(self) -> dict[str, float]:
        exposition = self.metrics.exposition()[0].decode()
        return {f"{s.name}{{{','.join(f'{k}={v}' for k, v in s.labels.items())}}}": s.value
                for family in text_string_to_metric_families(exposition) if family.name.startswith("healer_canary")
                for s in family.samples}


@pytest.fixture
def canaries(shop: Shop, shop_env: dict[str, str]) -> Iterator[Canaries]:
    """The canary job as the daemon builds it, on the shop's peers, with its metrics."""
    settings = Settings.from_env({**shop_env, "HEALER_WORKERS": "1"})
    services = Services.build(settings)
    metrics = Metrics()
    with rendering(settings) as render:
        job = CanaryJob(build_canary(settings, services, render), interval_seconds=60)
        metrics.watch_canary(job.state, fresh_seconds=180)
        yield Canaries(job, metrics, services, settings)
    services.close()


def bucket_keys(shop: Shop) -> list[str]:
    listed = shop.s3.client.list_objects_v2(Bucket=shop.s3.bucket)
    return [item["Key"] for item in listed.get("Contents", [])]


def canary_rows(shop: Shop) -> tuple[int, int]:
    with shop.sessions() as session:
        return (session.scalar(select(func.count()).select_from(Order).where(Order.is_canary.is_(True))) or 0,
                session.scalar(select(func.count()).select_from(OrderEvent)) or 0)


def leave_a_crashed_canary(shop: Shop) -> uuid.UUID:
    """What a run that died after its s3 phase leaves: its row, paid an hour ago, lease run out,
    and its uploads and their copies."""
    order_id = uuid.uuid4()
    for key in canary_keys(order_id)[:-1]:
        shop.store.put(key, b"left behind", "application/octet-stream")
    keys = {f"{u.kind}_key": f"canary/{order_id}/{u.name}" for u in uploads()}
    with transaction(shop.sessions) as session:
        session.add(Order(id=order_id, is_canary=True, status=OrderStatus.PAID, email=FROM_EMAIL, amount_cents=4900,
                          currency="usd", template="canary", paid_at=utcnow() - timedelta(hours=2),
                          next_attempt_at=utcnow() - timedelta(hours=1), lease_owner="canary:dead",
                          lease_expires_at=utcnow() - timedelta(minutes=5), **keys))
    return order_id


def test_a_canary_passes_every_phase_charges_and_delivers_nothing_and_leaves_nothing_behind(
    shop: Shop, canaries: Canaries,
) -> None:
    leave_a_crashed_canary(shop)
    # A canary row is no customer's order: not claimed, not at risk, not counted, not in the backlog.
    assert shop.pipeline().claim("worker-1", 10) == []
    assert orders.money_at_risk(shop.sessions).orders == 0
    assert sum(orders.count_by_status(shop.sessions).values()) == 0
    figures = Metrics().watch_orders(shop.sessions, sla_seconds=60).snapshot()
    assert figures is not None and sum(figures.by_status.values()) == figures.stuck == 0
    assert run_check(OrdersCheck(sessions=shop.sessions, sla_seconds=60)).status is Status.OK

    run = canaries.run()

    assert [(p.phase, p.outcome) for p in run.phases] == [(phase, PhaseOutcome.OK) for phase in Phase], run.phases
    templates = list_templates(canaries.settings.assets_dir)
    assert f"{len(templates)} templates rendered ({', '.join(templates)})" in run.phases[2].detail
    assert "also 1 left by runs that did not finish" in run.phases[4].detail
    samples = canaries.samples()
    assert {k: v for k, v in samples.items() if k.startswith("healer_canary_success")} == {
        f"healer_canary_success{{phase={phase.value}}}": 1.0 for phase in Phase}
    assert all(samples[f"healer_canary_duration_seconds{{phase={phase.value}}}"] > 0 for phase in Phase)
    assert samples["healer_canary_last_success_timestamp_seconds{}"] == run.finished_at.timestamp()
    # Nothing left: not its objects nor the crashed run's (under canary/, orders/, pdfs/), no row, no story.
    assert bucket_keys(shop) == []
    assert canary_rows(shop) == (0, 0)
    # Charged nothing: Stripe was only read. Delivered nothing: SendGrid validated one sandboxed email.
    assert {(r.method, r.path) for r in shop.stripe.requests} == {("GET", "/v1/payment_intents")}
    assert shop.sendgrid.messages == []
    [email] = shop.sendgrid.sandboxed
    assert email.to == (FROM_EMAIL,) and "Your poster is ready" in email.subject
    assert all(json.loads(r.body)["mail_settings"] == {"sandbox_mode": {"enable": True}}
               for r in shop.sendgrid.requests if r.path == "/v3/mail/send")


def test_a_missing_font_fails_the_render_phase_naming_runbook_3_until_it_is_restored(
    shop: Shop, canaries: Canaries, shop_env: dict[str, str],
) -> None:
    font = canaries.settings.assets_dir / FONT
    assert canaries.run().ok
    font.rename(font.with_suffix(".away"))

    failed = canaries.run()
    cli = subprocess.run([*HEALER, "canary", "--json"], env={**shop_env, "HEALER_WORKERS": "1"}, cwd=REPO,
                         capture_output=True, text=True, timeout=120)

    render = failed.phases[2]
    assert (render.phase, render.outcome, render.error_class) == (Phase.RENDER, PhaseOutcome.FAILED, "asset_missing")
    assert f"font file {font} is missing" in render.detail
    assert render.runbook == "3 PDF generation failing" and "HEALER_ASSETS_DIR" in render.remedy
    assert [p.outcome for p in failed.phases] == [PhaseOutcome.OK, PhaseOutcome.OK, PhaseOutcome.FAILED,
                                                  PhaseOutcome.SKIPPED, PhaseOutcome.OK]
    samples = canaries.samples()
    assert samples["healer_canary_success{phase=render}"] == 0.0
    assert "healer_canary_success{phase=email}" not in samples  # not reached: no verdict
    assert cli.returncode == 1, cli.stdout + cli.stderr
    said = json.loads(cli.stdout)
    assert said["status"] == "failed"
    assert [(p["phase"], p["outcome"], p["runbook"]) for p in said["phases"]][2:4] == [
        ("render", "failed", "3 PDF generation failing"), ("email", "skipped", None)]
    page = status_page(canaries)
    assert 'id="canary"' in page and "failed at <strong>render</strong> (asset_missing)" in page
    assert "#runbook-3-pdf-generation-failing" in page

    font.with_suffix(".away").rename(font)
    recovered = canaries.run()

    assert recovered.ok, recovered.phases
    assert canaries.samples()["healer_canary_success{phase=render}"] == 1.0
    assert bucket_keys(shop) == [] and canary_rows(shop) == (0, 0)
    assert shop.sendgrid.messages == [] and len(shop.sendgrid.sandboxed) == 2  # the passing runs' alone


def status_page(canaries: Canaries) -> str:
    """`GET /` of the operator app as the daemon builds it, with the canary job's state."""
    services = canaries.services
    apps = build_apps(canaries.settings, services, services.pipeline(lambda _inputs: b""), HealthMonitor([]),
                      canaries.metrics, lambda: (True, "ok"), lambda _order_id, _why: False, canary=canaries.job.state)
    answer = TestClient(apps.operator).get("/")
    assert answer.status_code == 200, answer.text
    return str(answer.text)
