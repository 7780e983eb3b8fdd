"""The daemon's two apps as healer.wiring builds them (on the embedded SQLite database), each served
by uvicorn on a real port of 127.0.0.1, for tests of what a browser or an on-call person fetches."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from healer import db
from healer.config import Settings
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.wiring import Services, build_apps
from tests.eventually import eventually
from tests.fakes.ports import free_port


@dataclass(frozen=True)
class Listeners:
    public: str  # base URLs
    operator: str


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def get(url: str, method: str = "GET") -> Answer:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, timeout=15, what=f"uvicorn to listen on port {port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def daemon_listeners(data_dir: Path) -> Iterator[Listeners]:
    settings = Settings.from_env({"HEALER_DATA_DIR": str(data_dir), "STRIPE_WEBHOOK_SECRET": "whsec_x"})
    services = Services.build(settings)
    db.upgrade(services.engine)
    pipeline = services.pipeline(lambda _inputs: b"")
    apps = build_apps(settings, services, pipeline, HealthMonitor([]), Metrics(), lambda: (True, "ok"),
                      lambda _order_id, _why: False)
    try:
        with serving(apps.public) as public, serving(apps.operator) as operator:
            yield Listeners(public, operator)
    finally:
        services.close()
