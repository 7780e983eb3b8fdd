"""`healer run` runs the canary order on HEALER_CANARY_INTERVAL_SECONDS, and shows it where operators
look: /metrics and the status page. What a canary run does, and how it fails, is
tests/healer/test_canary.py's."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.daemon import healer_env, running_daemon
from tests.eventually import eventually
from tests.fakes.shop_fixtures import Shop


def test_the_daemon_runs_the_canary_on_its_interval_and_shows_it_in_metrics_and_on_its_status_page(
    shop: Shop, shop_env: dict[str, str], tmp_path: Path,
) -> None:
    env = healer_env(shop_env, HEALER_CANARY_INTERVAL_SECONDS="2", HEALER_WORKERS="1")

    with running_daemon(env, tmp_path / "daemon.log") as daemon:

        def passed() -> str | None:
            metrics = daemon.ops("GET", "/metrics")[2].decode()
            return metrics if 'healer_canary_success{phase="cleanup"} 1.0' in metrics else None

        metrics = eventually(passed, timeout=30, interval=0.5, what="a canary run that passed, in /metrics")
        page = daemon.ops("GET", "/")[2].decode()

    for phase in ("stripe", "s3", "render", "email", "cleanup"):
        assert f'healer_canary_success{{phase="{phase}"}} 1.0' in metrics
    assert "healer_canary_last_success_timestamp_seconds" in metrics
    # What the canary's alerts read: its failed runs in a row, and the interval they count in.
    assert "healer_canary_failed_runs_in_a_row 0.0" in metrics
    assert "healer_canary_interval_seconds 2.0" in metrics  # HEALER_CANARY_INTERVAL_SECONDS
    assert 'healer_leader{job="canary"} 1.0' in metrics  # one replica at a time runs it
    assert 'id="canary"' in page and "went through every phase" in page
    assert "Canary passed in" in daemon.log()
    assert shop.sendgrid.messages == [] and shop.sendgrid.sandboxed  # validated, never delivered
