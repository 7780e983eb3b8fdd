"""`GET /docs` on the operator listener works without the internet: Swagger UI's scripts, styles and
icon come from the daemon itself (the swagger_ui_bundle package), fetched over HTTP from the
daemon's own apps; the public listener still has no docs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urljoin

import pytest
from swagger_ui_bundle import swagger_ui_path

from tests.healer.listeners import Answer, Listeners, get

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
REFERENCE = re.compile(r"""(?:src|href)="([^"]+)"|url: '([^']+)'""")


@pytest.fixture(scope="module")
def docs(listeners: Listeners) -> Answer:
    return get(listeners.operator + "/docs")


def referenced(page: str) -> list[str]:
    return [src or url for src, url in REFERENCE.findall(page)]


def test_the_docs_page_references_no_other_host(docs: Answer) -> None:
    assert docs.status == 200 and docs.headers["content-type"].startswith("text/html")
    assert "://" not in docs.text  # no CDN, no favicon from fastapi.tiangolo.com
    assert any(url.endswith("swagger-ui-bundle.js") for url in referenced(docs.text))


def test_everything_the_docs_page_references_is_served_by_the_daemon_with_its_type(
    listeners: Listeners, docs: Answer
) -> None:
    urls = referenced(docs.text)
    assert {Path(url).suffix for url in urls} == set(CONTENT_TYPES)  # the script, style, icon, schema

    for url in urls:
        answer = get(urljoin(listeners.operator + "/docs", url))
        assert answer.status == 200, url
        assert answer.headers["content-type"].startswith(CONTENT_TYPES[Path(url).suffix]), url
        assert answer.body, url
    script = get(urljoin(listeners.operator, next(u for u in urls if u.endswith(".js"))))
    assert b"SwaggerUIBundle" in script.body


def test_no_file_outside_the_swagger_ui_assets_is_served(listeners: Listeners) -> None:
    for name in ("nope.js", ".hidden", "..", "%2e%2e%2fpyproject.toml"):
        assert get(f"{listeners.operator}/docs/assets/{name}").status == 404, name


def test_the_public_listener_still_has_no_docs(listeners: Listeners) -> None:
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/redoc", "/openapi.json"):
        assert get(listeners.public + path).status == 404, path


def test_the_bundled_swagger_ui_renders_the_documents_openapi_version(listeners: Listeners) -> None:
    version = json.loads(get(listeners.operator + "/openapi.json").body)["openapi"]
    found = re.search(r"swagger-ui-(\d+)\.", str(swagger_ui_path))
    assert found is not None, swagger_ui_path
    swagger_major = int(found.group(1))

    # Swagger UI renders OpenAPI 3.0 since version 3, and 3.1 only since version 5.
    assert swagger_major >= (5 if version.startswith("3.1") else 3), (version, str(swagger_ui_path))
