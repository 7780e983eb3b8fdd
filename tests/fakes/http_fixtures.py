"""The two HTTP apps over ASGI (TestClient), built the way the daemon builds them, on a shop's
real pipeline and peers: `public_client` for what customers reach, `operator_client` for the rest."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from fulfilment.pipeline import Pipeline
from fulfilment.secrets import Redactor
from fulfilment.storage import ObjectStore
from healer.config import Secret
from healer.health.monitor import HealthMonitor
from healer.http.observe import HttpMetrics
from healer.http.operator import OperatorContext, create_operator_app
from healer.http.public import PublicContext, create_public_app
from healer.http.ratelimit import ClientRateLimit
from tests.fakes.shop_fixtures import PUBLIC_BASE_URL

DAY = timedelta(days=1)


def public_client(
    sessions: Any,
    pipeline: Pipeline,
    store: ObjectStore,
    *,
    session_lifetime: timedelta = DAY,
    restore_pdf: Callable[[uuid.UUID, str], bool] | None = None,
    per_minute: int = 10_000,
    http_metrics: HttpMetrics | None = None,
    **client_options: Any,
) -> TestClient:
    app = create_public_app(PublicContext(
        sessions=sessions, pipeline=pipeline, store=store, public_base_url=PUBLIC_BASE_URL,
        session_lifetime=session_lifetime, rate_limit=ClientRateLimit(per_minute), restore_pdf=restore_pdf,
        http_metrics=http_metrics,
    ))
    return TestClient(app, follow_redirects=False, **client_options)


def operator_client(
    sessions: Any,
    pipeline: Pipeline,
    *,
    admin: str | None = None,
    health: HealthMonitor | None = None,
    liveness: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
    redact: Redactor | None = None,
    http_metrics: HttpMetrics | None = None,
    **client_options: Any,
) -> TestClient:
    app = create_operator_app(OperatorContext(
        sessions=sessions, pipeline=pipeline, admin_token=Secret(admin) if admin else None,
        redact=redact or Redactor(), liveness=liveness, health=health, http_metrics=http_metrics,
    ))
    return TestClient(app, **client_options)
