"""Corrupt and huge uploads, as orders: each ends in a clear state, and the cost of refusing it is
paid in header bytes, not in decoding.

The renderer's own limits (a photo's pixel count and size, a recording's duration, undecodable
files) are pinned in tests/fulfilment/test_render.py and test_waveform.py, and a corrupt photo or
audio order in tests/fulfilment/test_pipeline.py. Here whole orders carry a real decompression bomb,
lying audio headers and an upload too large to fetch through the pipeline to S3 and back.
"""

from __future__ import annotations

import logging
import resource
import struct
import time
import zlib

import pytest

from fulfilment.steps import MAX_PHOTO_BYTES
from healer.demo.samples import sample_audio
from tests.badinput.helpers import complete
from tests.fakes.shop_fixtures import Shop

pytestmark = pytest.mark.timeout(120)


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid RGB PNG of black pixels: `width`x`height` pixels in a few hundred KB."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)  # filter byte + RGB
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def flac_claiming(hours: float) -> bytes:
    """One second of real FLAC whose STREAMINFO says it lasts `hours`."""
    data = bytearray(sample_audio(seed=2, seconds=1.0, fmt="FLAC"))
    assert data[:4] == b"fLaC"
    fields = int.from_bytes(data[18:26], "big")  # rate (20 bits), channels, depth, total samples (36)
    samples = min(int(hours * 3600 * 22050), 2**36 - 1)
    data[18:26] = ((fields & ~(2**36 - 1)) | samples).to_bytes(8, "big")
    return bytes(data)


def wav_claiming_everything() -> bytes:
    """One second of real WAV whose RIFF and data sizes claim 4 GiB."""
    wav = sample_audio(seed=2, seconds=1.0)
    data_at = wav.index(b"data")
    return (wav[:4] + struct.pack("<I", 0xFFFFFFF0) + wav[8:data_at + 4] + struct.pack("<I", 0xFFFFFF00)
            + wav[data_at + 8:])


def test_a_decompression_bomb_photo_is_refused_from_its_header(shop: Shop) -> None:
    bomb = png_bomb(16_000, 13_000)  # 208 megapixels, over the default 200; 624 MB decoded
    assert len(bomb) < 1_000_000
    order_id = shop.paid_order(photo=bomb)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()

    complete(shop, order_id)

    order = shop.order(order_id)
    assert (order.status, order.last_error_step, order.last_error_class) == ("needs_attention", "render", "bad_input")
    assert "pixel limit" in (order.last_error or "")
    assert time.monotonic() - started < 10
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 100_000, f"resident set grew by {grown_kib} KiB: the bomb was decoded"
    assert shop.emails_to("ada@example.com") == []


def test_a_recording_whose_header_claims_hundreds_of_hours_is_refused_from_the_header(shop: Shop) -> None:
    order_id = shop.paid_order(audio=flac_claiming(hours=865), with_waveform=False)

    complete(shop, order_id)

    order = shop.order(order_id)
    assert (order.status, order.last_error_class) == ("needs_attention", "bad_input")
    assert "over the limit" in (order.last_error or "") and "865:" in (order.last_error or "")


def test_a_wav_header_claiming_four_gigabytes_is_read_for_what_is_really_there(shop: Shop) -> None:
    # libsndfile trusts the bytes over the header, so the wave is drawn from the one real second.
    order_id = shop.paid_order(audio=wav_claiming_everything(), with_waveform=False)

    complete(shop, order_id)

    assert shop.order(order_id).status == "completed"
    assert len(shop.emails_to("ada@example.com")) == 1


def test_a_waveform_image_that_is_a_bomb_gives_way_to_the_audio(shop: Shop, caplog: pytest.LogCaptureFixture) -> None:
    order_id = shop.paid_order()
    shop.store.put(f"tmp/{order_id}/waveform.png", png_bomb(9_000, 5_000), "image/png")  # 45 MP

    with caplog.at_level(logging.WARNING, logger="fulfilment.render"):
        complete(shop, order_id)

    assert shop.order(order_id).status == "completed"
    assert "waveform image unusable" in caplog.text and "over the limit" in caplog.text


def test_a_photo_larger_than_the_step_fetches_is_refused_unread(shop: Shop) -> None:
    order_id = shop.paid_order(photo=b"\xff\xd8\xff" + b"\0" * (MAX_PHOTO_BYTES + 1))

    complete(shop, order_id)

    order = shop.order(order_id)
    assert (order.status, order.last_error_step, order.last_error_class) == ("needs_attention", "render", "bad_input")
    assert "more than the" in (order.last_error or "")
