"""Customer text with HTML and control characters, all the way through a real completion.

The pieces are pinned one by one elsewhere (tests/fulfilment/test_mailer.py escapes the title in the
HTML part and keeps line breaks out of the subject; tests/fulfilment/test_render.py draws markup as
text and drops invisible characters). Here one order carries all of it through the pipeline to
SendGrid and S3, and the email and the PDF that come out are read back.
"""

from __future__ import annotations

import io

import pytest
from pypdf import PdfReader

from tests.badinput.helpers import complete
from tests.fakes.shop_fixtures import Shop

pytestmark = pytest.mark.timeout(120)

# No NUL: PostgreSQL text cannot hold one, so the shop cannot store it.
TITLE = '<script>alert("x")</script> & <b>Zoë</b>\r\nBcc: evil@example.com\x1b[31m\u2028end'
SUBTITLE = "<img src=x onerror=alert(1)>\ttab\x7fdel\x01"
CONTROLS = ["\r", "\n", "\x01", "\x1b", "\x7f", "\u2028"]


def test_html_and_control_characters_are_escaped_in_the_email_and_set_as_text_in_the_pdf(shop: Shop) -> None:
    order_id = shop.paid_order(title=TITLE, subtitle=SUBTITLE)

    complete(shop, order_id)

    assert shop.order(order_id).status == "completed"
    [message] = shop.emails_to("ada@example.com")
    assert message.to == ("ada@example.com",)  # no header injected a second recipient
    assert not any(c in message.subject for c in CONTROLS)
    assert "<script>" in message.subject  # the subject is plain text: shown, never interpreted
    assert "<script>" not in (message.html or "") and "&lt;script&gt;" in (message.html or "")
    assert "&lt;b&gt;Zoë&lt;/b&gt;" in (message.html or "")
    assert not any(c in (message.html or "") + (message.text or "") for c in ("\x01", "\x1b", "\x7f"))

    pdf = shop.store.get(f"pdfs/final_{order_id}.pdf")
    text = " ".join(PdfReader(io.BytesIO(pdf)).pages[0].extract_text().split())
    assert '<script>alert("x")</script> & <b>Zoë</b>' in text
    assert "<IMG SRC=X ONERROR=ALERT(1)> TABDEL" in text  # this template sets its subtitle in capitals
    assert not any(c in text for c in ("\x01", "\x1b", "\x7f"))
