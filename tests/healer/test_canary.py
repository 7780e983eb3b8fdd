"""The canary (`healer canary`, the scheduled `canary` job): a synthetic order through the real steps
on real peers (PostgreSQL, moto's S3 server, the fake SendGrid and Stripe of tests/fakes, render
processes on a private copy of the assets). It charges nothing, delivers nothing (SendGrid's sandbox
mode), leaves nothing behind, is counted nowhere a customer's order is, and when it fails it names
the phase, the runbook issue and what to do: in its metrics, on the status page, and in the exit
code of `healer canary`. Its metrics count failed runs in a row and export its interval, so that its
alerts follow HEALER_CANARY_INTERVAL_SECONDS (tests/dashboards test the rules that read them)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
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
from healer.wiring import Services, build_apps, canary_job, rendering
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
        return canary_samples(self.metrics)


def canary_samples(metrics: Metrics) -> dict[str, float]:
    """The healer_canary_* samples of a scrape, by `name{label=value,...}`."""
    exposition = metrics.exposition()[0].decode()
    return {f"{s.name}{{{','.join(f'{k}={v}' for k, v in s.labels.items())}}}": s.value
            for family in text_string_to_metric_families(exposition) if family.name.startswith("healer_canary")
            for s in family.samples}


@pytest.fixture
def canaries(shop: Shop, shop_env: dict[str, str]) -> Iterator[Canaries]:
    """The canary job as the daemon builds it (every minute), on the shop's peers, with its metrics."""
    settings = Settings.from_env({**shop_env, "HEALER_WORKERS": "1", "HEALER_CANARY_INTERVAL_SECONDS": "60"})
    services = Services.build(settings)
    metrics = Metrics()
    with rendering(settings) as render:
        job = canary_job(settings, services, render, metrics, owner="test")
        assert job is not None
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
    assert samples["healer_canary_failed_runs_in_a_row{}"] == 0.0
    assert samples["healer_canary_interval_seconds{}"] == 60.0  # HEALER_CANARY_INTERVAL_SECONDS
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
    passed = canaries.run()
    assert passed.ok
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
    assert samples["healer_canary_failed_runs_in_a_row{}"] == 1.0
    assert cli.returncode == 1, cli.stdout + cli.stderr
    said = json.loads(cli.stdout)
    assert said["status"] == "failed"
    assert [(p["phase"], p["outcome"], p["runbook"]) for p in said["phases"]][2:4] == [
        ("render", "failed", "3 PDF generation failing"), ("email", "skipped", None)]
    page = status_page(canaries)
    assert 'id="canary"' in page and "failed at <strong>render</strong> (asset_missing)" in page
    assert "#runbook-3-pdf-generation-failing" in page

    assert not canaries.run().ok
    samples = canaries.samples()
    assert samples["healer_canary_failed_runs_in_a_row{}"] == 2.0  # what HealerCanaryFailing pages on
    assert samples["healer_canary_last_success_timestamp_seconds{}"] == passed.finished_at.timestamp()

    font.with_suffix(".away").rename(font)
    recovered = canaries.run()

    assert recovered.ok, recovered.phases
    samples = canaries.samples()
    assert samples["healer_canary_success{phase=render}"] == 1.0
    assert samples["healer_canary_failed_runs_in_a_row{}"] == 0.0
    assert samples["healer_canary_last_success_timestamp_seconds{}"] == recovered.finished_at.timestamp()
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


def test_a_run_two_intervals_old_says_nothing_of_its_phases_or_failures_but_the_interval_stays(
    canaries: Canaries,
) -> None:
    # Before the first run (one interval after start): the interval alone, for the alerts.
    assert canaries.samples() == {"healer_canary_interval_seconds{}": 60.0}
    (canaries.settings.assets_dir / FONT).unlink()
    failed = canaries.run()
    assert not failed.ok

    def aged(seconds: float) -> dict[str, float]:
        """The same metrics, as scraped `seconds` after the run finished (the daemon waits on a
        failing check, or another replica runs the canary now)."""
        state = canaries.job.state()
        metrics = Metrics()
        older = replace(failed, finished_at=failed.finished_at - timedelta(seconds=seconds))
        metrics.watch_canary(lambda: replace(state, latest=older), interval_seconds=canaries.job.interval_seconds)
        return canary_samples(metrics)

    # Current until the run after next is due: two intervals and a minute for the run itself.
    current = aged(170)
    assert current["healer_canary_failed_runs_in_a_row{}"] == 1.0
    assert current["healer_canary_success{phase=render}"] == 0.0
    # Past that, nothing of the run: no stale failure keeps an alert firing. It never passed, so no
    # last success either; the interval stays.
    assert aged(190) == {"healer_canary_interval_seconds{}": 60.0}
