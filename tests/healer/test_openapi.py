"""Both OpenAPI documents, as the daemon builds its apps (healer.wiring.build_apps): every status an
operation answers is documented, every JSON body has a typed schema (no empty `{}` a client could
not be generated from and no conformance check could fail), the webhook's header and body are
there, downloads redirect, and the probes and metrics are plain text.

That the documents tell the truth about what the running daemon answers is schemathesis' job
(tests/badinput/test_openapi_fuzz.py); that a client can be generated from them and call the
endpoints is tests/badinput/test_generated_clients.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healer import db
from healer.config import Settings
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.wiring import Apps, Services, build_apps


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[Apps]:
    settings = Settings.from_env({"HEALER_DATA_DIR": str(tmp_path / "var"), "STRIPE_WEBHOOK_SECRET": "whsec_x"})
    services = Services.build(settings)
    db.upgrade(services.engine)
    pipeline = services.pipeline(lambda _inputs: b"")
    yield build_apps(settings, services, pipeline, HealthMonitor([]), Metrics(), lambda: (True, "ok"),
                     lambda _order_id, _why: False)
    services.close()


def documents(apps: Apps) -> dict[str, dict[str, Any]]:
    return {"public": apps.public.openapi(), "operator": apps.operator.openapi()}


def responses(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    result: dict[str, Any] = document["paths"][path][method]["responses"]
    return result


EXPECTED = {
    ("public", "post", "/api/orders/{order_id}/complete"): {"202", "403", "404", "409", "422", "429", "503"},
    ("public", "get", "/api/orders/{order_id}"): {"200", "403", "404", "422", "429", "503"},
    ("public", "get", "/download/{token}"): {"307", "200", "404", "410", "429", "503"},
    ("public", "post", "/stripe/webhook"): {"200", "400", "413", "503"},
    ("public", "post", "/sendgrid/events"): {"200", "400", "403", "404", "413", "503"},
    ("operator", "get", "/api/orders/{order_id}"): {"200", "404", "409", "422", "503"},
    ("operator", "post", "/api/orders/{order_id}/retry"): {"202", "403", "404", "409", "422", "503"},
    ("operator", "get", "/livez"): {"200", "503"},
    ("operator", "get", "/readyz"): {"200", "503", "422"},
    ("operator", "get", "/health"): {"200", "503"},
    ("operator", "get", "/health/{check}"): {"200", "404"},
    ("operator", "get", "/metrics"): {"200"},
    ("operator", "get", "/public/openapi.json"): {"200"},
}


def test_every_operation_documents_every_status_it_answers(apps: Apps) -> None:
    docs = documents(apps)

    missing = {key: sorted(codes - set(responses(docs[key[0]], key[1], key[2])))
               for key, codes in EXPECTED.items()}

    assert {key: codes for key, codes in missing.items() if codes} == {}
    operations = {(name, method, path) for name, doc in docs.items() for path, item in doc["paths"].items()
                  for method in item}
    assert operations == set(EXPECTED)  # and no operation goes untested here


def schemas(node: Any) -> Iterator[Any]:
    """Every JSON body schema in a document, and every schema nested in them."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema" or (key in ("anyOf", "items", "additionalProperties") and value is not True):
                yield from value if isinstance(value, list) else [value]
            yield from schemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from schemas(item)


def test_every_body_has_a_typed_schema(apps: Apps) -> None:
    for name, doc in documents(apps).items():
        untyped = [schema for schema in schemas(doc) if isinstance(schema, dict)
                   and not {"$ref", "type", "anyOf", "properties"} & set(schema)]
        assert untyped == [], name
        for schema_name, component in doc["components"]["schemas"].items():
            assert component.get("properties") or component.get("enum"), (name, schema_name)


def test_refusals_have_the_problem_body_and_say_when_to_retry(apps: Apps) -> None:
    complete = responses(documents(apps)["public"], "post", "/api/orders/{order_id}/complete")

    for code in ("403", "404", "409", "429", "503"):
        assert complete[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert complete["429"]["headers"]["Retry-After"]["required"] is True
    assert complete["503"]["headers"]["Retry-After"]["required"] is True


def test_downloads_are_documented_as_a_redirect_with_its_location(apps: Apps) -> None:
    download = responses(documents(apps)["public"], "get", "/download/{token}")

    assert "content" not in download["307"]
    assert download["307"]["headers"]["Location"]["required"] is True
    assert set(download["200"]["content"]) == {"application/pdf"}


def test_the_webhook_documents_its_signature_header_and_its_body(apps: Apps) -> None:
    webhook = documents(apps)["public"]["paths"]["/stripe/webhook"]["post"]

    [signature] = [p for p in webhook["parameters"] if p["in"] == "header"]
    assert (signature["name"], signature["required"]) == ("Stripe-Signature", True)
    body = webhook["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"id", "type", "created", "data"}
    objects = body["properties"]["data"]["properties"]["object"]["anyOf"]
    assert [o.get("title") for o in objects] == ["PaymentIntent", "Charge", None]
    assert objects[0]["properties"]["last_payment_error"]["anyOf"][0]["type"] == "object"
    assert "$defs" not in str(body) and "$ref" not in str(body)  # inlined: nothing dangles


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
def test_probes_and_metrics_are_plain_text(apps: Apps, path: str) -> None:
    answered = responses(documents(apps)["operator"], "get", path)

    # /metrics answers OpenMetrics too, when Prometheus asks for it (exemplars need it).
    expected = {"text/plain", "application/openmetrics-text"} if path == "/metrics" else {"text/plain"}
    for code, response in answered.items():
        if code != "422":
            assert set(response["content"]) == expected, (path, code)


def test_the_admin_and_session_tokens_are_security_schemes(apps: Apps) -> None:
    docs = documents(apps)

    assert docs["operator"]["paths"]["/api/orders/{order_id}/retry"]["post"]["security"] == [{"AdminToken": []}]
    assert docs["public"]["components"]["securitySchemes"]["SessionToken"] == {
        "type": "apiKey", "in": "header", "name": "X-Session-Token",
        "description": "the session token the shop gave the customer for this order"}


def test_sendgrids_event_webhook_documents_its_two_headers_and_its_batch(apps: Apps) -> None:
    events = documents(apps)["public"]["paths"]["/sendgrid/events"]["post"]

    headers = {p["name"]: p["required"] for p in events["parameters"] if p["in"] == "header"}
    assert headers == {"X-Twilio-Email-Event-Webhook-Signature": True, "X-Twilio-Email-Event-Webhook-Timestamp": True}
    body = events["requestBody"]["content"]["application/json"]["schema"]
    assert body["type"] == "array" and set(body["items"]["required"]) == {"event", "sg_event_id"}
    assert {"healer_order_id", "healer_email"} <= set(body["items"]["properties"])  # the mailer's custom arguments
