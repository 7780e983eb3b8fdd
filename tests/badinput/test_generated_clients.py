"""A client generated from each OpenAPI document the running daemon serves (openapi-python-client,
the generator most Python shops use) calls the endpoints it describes, over real HTTP, and its
typed models read every answer (an answer of a status the document does not list raises): what a
shop team would do with the documents.

The generator reads `application/pdf` only when told it is bytes (its `content_type_overrides`
option); nothing else about the documents needs help.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.badinput.helpers import ADMIN, Seeded
from tests.e2e.daemon import RunningDaemon
from tests.fakes.shop_fixtures import Shop

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
# No formatting hooks (nothing to format for a test); PDFs are bytes.
CONFIG = "post_hooks: []\ncontent_type_overrides:\n  application/pdf: application/octet-stream\n"
pytestmark = pytest.mark.timeout(240)


class Generated:
    """A generated client package, imported under its own name, and its operations by name."""

    def __init__(self, package: ModuleType) -> None:
        self.package = package

    def call(self, operation: str, client: Any, **arguments: Any) -> Any:
        module = importlib.import_module(f"{self.package.__name__}.api.default.{operation}")
        return module.sync_detailed(client=client, **arguments)

    def model(self, name: str) -> Any:
        return getattr(importlib.import_module(f"{self.package.__name__}.models"), name)


@pytest.fixture
def generated(daemon: RunningDaemon, tmp_path: Path) -> Iterator[dict[str, Generated]]:
    (tmp_path / "config.yaml").write_text(CONFIG)
    packages = {}
    for name, path in (("operator", "/openapi.json"), ("public", "/public/openapi.json")):
        document = tmp_path / f"{name}.json"
        with urllib.request.urlopen(daemon.ops_url + path, timeout=10) as response:
            document.write_bytes(response.read())
        package = f"healer_{name}_client"
        result = subprocess.run([str(GENERATOR), "generate", "--path", str(document), "--meta", "none",
                                 "--output-path", str(tmp_path / package), "--config", str(tmp_path / "config.yaml")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
        packages[name] = package
    sys.path.insert(0, str(tmp_path))
    try:
        yield {name: Generated(importlib.import_module(package)) for name, package in packages.items()}
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m.startswith(tuple(packages.values()))]:
            del sys.modules[module]


def test_a_client_generated_from_the_public_document_calls_the_public_api(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded, generated: dict[str, Generated]
) -> None:
    api = generated["public"]
    anyone = api.package.Client(base_url=daemon.base_url, raise_on_unexpected_status=True)

    def customer(order_id: Any) -> Any:
        return api.package.AuthenticatedClient(base_url=daemon.base_url, token=shop.order(order_id).session_token,
                                               prefix="", auth_header_name="X-Session-Token",
                                               raise_on_unexpected_status=True)

    view = api.call("show", customer(seeded.completed), order_id=seeded.completed).parsed
    assert isinstance(view, api.model("CustomerOrder")) and view.status.value == "completed"
    assert view.download_url.endswith(shop.order(seeded.completed).download_token)
    accepted = api.call("complete", customer(seeded.completed), order_id=seeded.completed)
    assert accepted.status_code == 202 and isinstance(accepted.parsed, api.model("CompletionAccepted"))
    unpaid = api.call("complete", customer(seeded.unpaid), order_id=seeded.unpaid)
    assert unpaid.status_code == 409 and isinstance(unpaid.parsed, api.model("Problem"))
    wrong = api.call("show", customer(seeded.unpaid), order_id=seeded.completed)
    assert wrong.status_code == 403 and "X-Session-Token" in wrong.parsed.detail

    link = api.call("download", anyone, token=shop.order(seeded.completed).download_token)
    assert link.status_code == 307 and link.headers["location"].startswith("http")
    assert api.call("download", anyone, token="x" * 40).status_code == 404

    event = api.model("StripeWebhookStripeEvent").from_dict(
        {"id": "evt_1", "type": "payment_intent.succeeded", "created": 1, "data": {"object": {}}})
    refused = api.call("stripe_webhook", anyone, body=event, stripe_signature="t=1,v1=00")
    assert refused.status_code == 400 and isinstance(refused.parsed, api.model("Problem"))


def test_a_client_generated_from_the_operator_document_calls_the_operator_api(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded, generated: dict[str, Generated]
) -> None:
    api = generated["operator"]
    anyone = api.package.Client(base_url=daemon.ops_url, raise_on_unexpected_status=True)
    admin = api.package.AuthenticatedClient(base_url=daemon.ops_url, token=ADMIN, raise_on_unexpected_status=True)

    assert api.call("livez", anyone).parsed == "ok"
    assert api.call("readyz", anyone, verbose="").parsed.endswith("readyz check passed\n")
    assert "healer_build_info" in api.call("metrics", anyone).parsed
    report = api.call("health_report", anyone).parsed
    assert isinstance(report, api.model("HealthReport")) and report.checks["database"].status == "ok"
    assert api.call("health_of", anyone, check="s3").parsed.name == "s3"
    assert api.call("health_of", anyone, check="nope").status_code == 404

    story = api.call("show", anyone, order_id=seeded.needs_attention).parsed
    assert isinstance(story, api.model("OrderView")) and story.status == "needs_attention"
    assert [event.step for event in story.events][-1] == "render"
    nothing = api.call("retry", admin, order_id=seeded.completed)
    assert nothing.status_code == 409 and nothing.parsed.detail.startswith("nothing to do")
    assert api.call("retry", anyone, order_id=seeded.completed).status_code == 403
    public_document = api.call("public_openapi", anyone).parsed
    assert "/stripe/webhook" in public_document.additional_properties["paths"]
