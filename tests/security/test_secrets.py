"""A password in DATABASE_URL, in its userinfo or its query string, and every other secret, is
masked in every output: health and readiness, the CLI, logs (tracebacks included), order stories."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fulfilment.models import Outcome, Step, transaction
from fulfilment.secrets import RedactingFilter, Redactor, mask_url_password
from healer.config import Settings
from healer.http.operator import OperatorContext, create_operator_app
from healer.wiring import Services, build_monitor
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop

QUERY_PASSWORD = "query-pw-never-shown-4711"
USERINFO_PASSWORD = "userinfo-pw-never-shown-0815"


def outage_url() -> str:
    """PostgreSQL where nothing listens, with a password in both places libpq reads one from."""
    return (f"postgresql://healer:{USERINFO_PASSWORD}@127.0.0.1:{free_port()}/shop"
            f"?password={QUERY_PASSWORD}&connect_timeout=2")


def test_health_and_readiness_mask_a_password_in_the_database_urls_query(tmp_path: Path) -> None:
    settings = Settings.from_env({"HEALER_DATA_DIR": str(tmp_path), "DATABASE_URL": outage_url()})
    services = Services.build(settings)
    monitor = build_monitor(settings, services)
    try:
        for _ in range(3):  # past the failure threshold
            monitor.run("database")
        app = create_operator_app(OperatorContext(services.sessions, services.pipeline(lambda _i: b""),
                                                  None, Redactor(settings.secret_values()), health=monitor))
        client = TestClient(app)
        shown = client.get("/health").text + client.get("/readyz?verbose").text + client.get("/health/database").text
    finally:
        services.close()

    assert "failing" in shown and "password=***" in shown
    assert QUERY_PASSWORD not in shown and USERINFO_PASSWORD not in shown


def test_healer_check_masks_it_in_its_output_and_its_log(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALER_", "DATABASE_URL"))}
    env.update(HEALER_DATA_DIR=str(tmp_path), DATABASE_URL=outage_url())

    done = subprocess.run([sys.executable, "-m", "healer", "--log-level", "debug", "check", "database"],
                          env=env, capture_output=True, text=True, timeout=60)

    output = done.stdout + done.stderr
    assert done.returncode == 2 and "database" in output, output[-2000:]
    assert QUERY_PASSWORD not in output and USERINFO_PASSWORD not in output


def test_a_log_line_or_traceback_quoting_a_secret_is_redacted() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactingFilter(Redactor([QUERY_PASSWORD])))
    log = logging.getLogger("tests.security.redaction")
    log.addHandler(handler)
    try:
        log.error("could not connect to %s", f"postgresql://u:{USERINFO_PASSWORD}@db/x?password={QUERY_PASSWORD}")
        try:
            raise RuntimeError(f"driver said: dsn password={QUERY_PASSWORD}")
        except RuntimeError:
            log.exception("step failed")
    finally:
        log.removeHandler(handler)

    text = "\n".join(records)
    assert "Traceback" in text and "postgresql://u:***@db/x?password=***" in text
    assert QUERY_PASSWORD not in text and USERINFO_PASSWORD not in text


def test_an_orders_story_on_the_operator_listener_is_redacted(shop: Shop) -> None:
    secret = "sk_live_51Hsecretthatleakedintoanerror"
    order_id = shop.paid_order(status="needs_attention", last_error=f"Stripe said: bad key {secret}")
    with transaction(shop.sessions) as session:
        shop.pipeline().note(session, order_id, Step.VERIFY_PAYMENT, Outcome.FAILED, f"key {secret} refused")
    app = create_operator_app(OperatorContext(shop.sessions, shop.pipeline(), None, Redactor([secret])))

    body = TestClient(app).get(f"/api/orders/{order_id}").json()

    assert secret not in json.dumps(body) and "sk_live_…rror" in body["last_error"]



@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:////var/lib/healer/healer.sqlite3", "sqlite:////var/lib/healer/healer.sqlite3"),
    ("sqlite:///var/healer.sqlite3", "sqlite:///var/healer.sqlite3"),
    ("postgresql://shop@db:5432/shop", "postgresql://shop@db:5432/shop"),
    ("postgresql://shop:hunter2@db:5432/shop", "postgresql://shop:***@db:5432/shop"),
    ("postgresql://shop@db/shop?password=hunter2&sslmode=require", "postgresql://shop@db/shop?password=***&sslmode=require"),
])
def test_a_database_url_is_shown_whole_but_its_password(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown
