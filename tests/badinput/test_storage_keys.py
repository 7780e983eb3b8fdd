"""Keys that climb out of the store, in the order row and in download links.

`validate_key` itself and both stores' refusal of bad keys are pinned in
tests/fulfilment/test_storage.py; the 404 for a few malformed download tokens in
tests/healer/test_app.py. Here the keys arrive the way they would in an attack: written into the
shop's order row (the shop's database is the daemon's input), and sent as download tokens to a
running daemon.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from fulfilment.models import Order, transaction
from fulfilment.storage import LocalStore
from healer.demo.samples import sample_audio, sample_photo
from tests.badinput.helpers import Seeded, complete
from tests.e2e.daemon import RunningDaemon
from tests.fakes.http_fixtures import public_client
from tests.fakes.shop_fixtures import Shop

pytestmark = pytest.mark.timeout(120)
TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "tmp/../../../etc/passwd", "tmp/..\\..\\etc\\passwd"]


def set_columns(shop: Shop, order_id: object, **values: object) -> None:
    with transaction(shop.sessions) as session:
        order = session.get(Order, order_id)
        assert order is not None
        for name, value in values.items():
            setattr(order, name, value)


@pytest.mark.parametrize("column", ["photo_key", "audio_key", "waveform_key"])
@pytest.mark.parametrize("key", TRAVERSALS)
def test_an_upload_key_that_climbs_out_is_refused_and_nothing_is_copied(shop: Shop, column: str, key: str) -> None:
    columns: dict[str, Any] = {column: key}
    order_id = shop.paid_order(**columns)

    complete(shop, order_id)

    order = shop.order(order_id)
    assert (order.status, order.last_error_step, order.last_error_class) == (
        "needs_attention", "migrate_files", "bad_input")
    assert "invalid object key" in (order.last_error or "")
    listing = shop.s3.client.list_objects_v2(Bucket=shop.s3.bucket, Prefix=f"orders/{order_id}/")
    kind = column.removesuffix("_key")  # uploads before it in the step may have been copied; it not
    assert not [item["Key"] for item in listing.get("Contents", []) if f"/{kind}" in item["Key"]]
    assert shop.emails_to("ada@example.com") == []


def test_on_the_local_store_a_key_naming_a_file_outside_is_never_read(shop: Shop, tmp_path: Path) -> None:
    # A real photo outside the store: were it read, it would be printed on a poster and mailed.
    outside = tmp_path / "private" / "photo.jpg"
    outside.parent.mkdir()
    outside.write_bytes(sample_photo(seed=7, size=(120, 160)))
    store = LocalStore(tmp_path / "store")
    store.put("tmp/o/voice.wav", sample_audio(seed=1, seconds=1.0), "audio/wav")
    order_id = shop.paid_order(photo_key="../private/photo.jpg", audio_key="tmp/o/voice.wav", waveform_key=None)

    pipeline = shop.pipeline(store=store, max_attempts=1)
    assert pipeline.claim_order(order_id, "test")
    pipeline.run(order_id, "test")

    order = shop.order(order_id)
    assert (order.status, order.last_error_class) == ("needs_attention", "bad_input")
    assert not (tmp_path / "store" / "orders").exists()
    assert shop.emails_to("ada@example.com") == []


BAD_TOKENS = {
    "sql-wildcards": "_" * 16,
    "percents": "%" * 20,
    "nul": "A" * 15 + "%00",
    "unicode": "é" * 20,
    "dashes": "-" * 64,
    "10k-chars": "a" * 10_000,
    "encoded-traversal-nul": "..%2F..%2F..%2Fetc%2Fpasswd%00" * 2,
}


def test_download_tokens_of_any_shape_are_404(daemon: RunningDaemon, seeded: Seeded) -> None:
    answers = {}
    for name, token in BAD_TOKENS.items():
        status, _, body = daemon.request("GET", f"/download/{urllib.parse.quote(token, safe='%')}")
        answers[name] = status
        assert b"root:" not in body, name

    assert answers == dict.fromkeys(BAD_TOKENS, 404)


def test_a_download_whose_stored_key_climbs_out_is_refused_and_logged(
    shop: Shop, daemon: RunningDaemon, seeded: Seeded
) -> None:
    token = "t" * 43
    set_columns(shop, seeded.completed, download_token=token, final_pdf_key="../../etc/passwd")

    status, headers, body = daemon.request("GET", f"/download/{token}")

    # Never served, never redirected. The daemon heals a broken stored key (remediation on: the
    # poster is rendered again under the order's own key), so the customer is asked to come back;
    # the log says which order and why. (With nobody to heal it, it is 404: tests/healer/test_app.py.)
    assert status == 503 and "location" not in {k.lower() for k in headers}, status
    assert b"root:" not in body
    assert (f"Download for order {seeded.completed}: bad_input: invalid object key '../../etc/passwd'"
            in daemon.log())


def test_on_the_local_store_a_download_whose_stored_key_climbs_out_is_refused(
    shop: Shop, tmp_path: Path, seeded: Seeded
) -> None:
    store = LocalStore(tmp_path / "store")
    token = "u" * 43
    set_columns(shop, seeded.completed, download_token=token, final_pdf_key="../../../../../../etc/passwd")
    client = public_client(shop.sessions, shop.pipeline(store=store), store, raise_server_exceptions=False)

    response = client.get(f"/download/{token}")

    assert response.status_code == 404 and b"root:" not in response.content
