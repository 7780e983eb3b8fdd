"""The mailers, through the real `sendgrid` library against the fake SendGrid over HTTP."""

from __future__ import annotations

import logging
import socket
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from fulfilment.errors import ErrorClass, StepError
from fulfilment.mailer import Email, OutboxMailer, SendGridMailer, download_email
from fulfilment.secrets import mask_secret
from tests.fakes.sendgrid_server import READ_ONLY_SCOPES, SendGridServer

LINK = "https://shop.example/download/tok_123"
ORDER_ID = "0b6f3c8e-58e4-4d57-9c43-2f0f8f7d1a11"


def poster_email(title: str = "Grandma's laugh", to: str = "customer@example.com") -> Email:
    return download_email(to=to, title=title, link=LINK, order_id=ORDER_ID)


def mailer_for(
    server: SendGridServer, key: str | None = None, timeout: float = 5
) -> SendGridMailer:
    return SendGridMailer(
        key or server.api_key, "shop@example.com", api_base=server.url, timeout=timeout
    )


def failure(mailer: SendGridMailer | OutboxMailer, email: Email | None = None) -> StepError:
    with pytest.raises(StepError) as caught:
        mailer.send(email or poster_email())
    return caught.value


# --- the download email -------------------------------------------------------------------------


def test_download_email_carries_the_link_in_both_parts() -> None:
    email = poster_email()

    assert email.subject == "Your poster is ready: Grandma's laugh"
    assert LINK in email.text and LINK in email.html
    assert ORDER_ID in email.text and ORDER_ID in email.html


def test_html_in_the_title_is_escaped_in_the_html_part() -> None:
    email = poster_email(title='<script>alert(1)</script> & "Mum"')

    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;Mum&quot;" in email.html
    assert '<script>alert(1)</script> & "Mum"' in email.text


def test_line_breaks_in_the_title_cannot_reach_the_subject() -> None:
    email = poster_email(title="Mum\r\nBcc: attacker@example.com\x00\u2028")

    assert email.subject == "Your poster is ready: Mum Bcc: attacker@example.com"
    assert "\r" not in email.text and "\x00" not in email.text and "\u2028" not in email.html


def test_an_empty_title_still_makes_a_friendly_subject() -> None:
    assert poster_email(title=" \r\n ").subject == "Your poster is ready"


# --- SendGrid -----------------------------------------------------------------------------------


def test_send_returns_sendgrids_message_id_and_sends_one_message(
    sendgrid_server: SendGridServer,
) -> None:
    message_id = mailer_for(sendgrid_server).send(poster_email())

    [message] = sendgrid_server.messages
    assert message_id == message.message_id != ""
    assert message.to == ("customer@example.com",)
    assert message.from_email == "shop@example.com"
    assert message.subject == "Your poster is ready: Grandma's laugh"
    assert message.text is not None and LINK in message.text
    assert message.html is not None and LINK in message.html


def test_escaped_title_arrives_escaped_and_on_one_line(sendgrid_server: SendGridServer) -> None:
    title = "<b>Mum</b>\r\nBcc: attacker@example.com"

    mailer_for(sendgrid_server).send(poster_email(title=title))

    [message] = sendgrid_server.messages
    assert message.subject == "Your poster is ready: <b>Mum</b> Bcc: attacker@example.com"
    assert message.html is not None and "&lt;b&gt;Mum&lt;/b&gt;" in message.html
    assert message.to == ("customer@example.com",)


def test_api_base_may_include_v3(sendgrid_server: SendGridServer) -> None:
    base = sendgrid_server.url + "/v3/"
    mailer = SendGridMailer(sendgrid_server.api_key, "shop@example.com", base)

    mailer.send(poster_email())

    assert len(sendgrid_server.messages) == 1


def test_revoked_key_is_email_auth_saying_the_key_is_invalid(
    sendgrid_server: SendGridServer,
) -> None:
    sendgrid_server.set_key_valid(False)

    error = failure(mailer_for(sendgrid_server))

    assert error.error_class is ErrorClass.EMAIL_AUTH
    assert "invalid, expired or revoked" in error.message
    assert "mail.send" not in error.message


def test_key_without_send_permission_is_email_auth_saying_so(
    sendgrid_server: SendGridServer,
) -> None:
    read_only = sendgrid_server.add_key(READ_ONLY_SCOPES)

    error = failure(mailer_for(sendgrid_server, key=read_only))

    assert error.error_class is ErrorClass.EMAIL_AUTH
    assert "mail.send permission" in error.message
    assert "revoked" not in error.message


def test_400_is_rejected_with_sendgrids_message(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(
        400, message="Does not contain a valid address.", field="personalizations.0.to.0.email"
    )

    error = failure(mailer_for(sendgrid_server))

    assert error.error_class is ErrorClass.EMAIL_REJECTED
    assert "Does not contain a valid address. (personalizations.0.to.0.email)" in error.message
    assert sendgrid_server.messages == []


def test_oversized_message_is_rejected(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.max_body_bytes = 500

    error = failure(mailer_for(sendgrid_server))

    assert error.error_class is ErrorClass.EMAIL_REJECTED
    assert "413" in error.message


def test_rate_limit_is_transient_with_the_reset_time(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(429)

    error = failure(mailer_for(sendgrid_server))

    assert error.error_class is ErrorClass.EMAIL_TRANSIENT
    assert "429" in error.message and "resets in" in error.message


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(sendgrid_server: SendGridServer, status: int) -> None:
    sendgrid_server.fail_next(status)

    error = failure(mailer_for(sendgrid_server))

    assert error.error_class is ErrorClass.EMAIL_TRANSIENT
    assert str(status) in error.message


def test_transient_failure_then_success_sends_once(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(503)
    mailer = mailer_for(sendgrid_server)

    failure(mailer)
    mailer.send(poster_email())

    assert len(sendgrid_server.messages) == 1


def test_hanging_server_times_out_as_transient(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.set_hang()
    mailer = mailer_for(sendgrid_server, timeout=0.5)

    started = time.monotonic()
    error = failure(mailer)

    assert time.monotonic() - started < 2
    assert error.error_class is ErrorClass.EMAIL_TRANSIENT
    assert "did not answer within 0.5 s" in error.message


def test_unreachable_sendgrid_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailer = SendGridMailer("SG.k.k", "shop@example.com", f"http://127.0.0.1:{port}", timeout=2)

    error = failure(mailer)

    assert error.error_class is ErrorClass.EMAIL_TRANSIENT
    assert "cannot reach SendGrid" in error.message


def test_wrong_api_base_is_email_auth_naming_the_setting(sendgrid_server: SendGridServer) -> None:
    mailer = SendGridMailer(
        sendgrid_server.api_key, "shop@example.com", sendgrid_server.url + "/elsewhere"
    )

    error = failure(mailer)

    assert error.error_class is ErrorClass.EMAIL_AUTH
    assert "SENDGRID_API_BASE" in error.message


@pytest.mark.parametrize(
    "address",
    [
        "",
        "not-an-address",
        "a@b",
        "a@@example.com",
        " customer@example.com",
        "customer@example.com\r\nBcc: attacker@example.com",
        "customer@example.com, attacker@example.com",
        "Name <customer@example.com>",
    ],
)
def test_invalid_recipient_is_bad_input_before_any_request(
    sendgrid_server: SendGridServer, address: str
) -> None:
    error = failure(mailer_for(sendgrid_server), poster_email(to=address))

    assert error.error_class is ErrorClass.BAD_INPUT
    assert sendgrid_server.requests == []


def test_internationalised_domain_is_sent_as_punycode(sendgrid_server: SendGridServer) -> None:
    mailer_for(sendgrid_server).send(poster_email(to="kunde@bücher.example"))

    assert sendgrid_server.messages[0].to == ("kunde@xn--bcher-kva.example",)


def test_content_starting_with_an_api_key_is_refused_by_the_library(
    sendgrid_server: SendGridServer,
) -> None:
    email = Email("customer@example.com", "Hi", "SG.abc.def is the key", "<p>hi</p>")

    error = failure(mailer_for(sendgrid_server), email)

    assert error.error_class is ErrorClass.BAD_INPUT
    assert sendgrid_server.requests == []


def test_api_key_never_appears_in_errors_logs_or_repr(
    sendgrid_server: SendGridServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = sendgrid_server.api_key
    mailer = mailer_for(sendgrid_server)
    errors = []

    mailer.send(poster_email())
    for status in (401, 403, 429, 503):
        sendgrid_server.fail_next(status)
        errors.append(failure(mailer))

    # The library logs request headers at DEBUG: prove they were there, and redacted.
    assert "Bearer [redacted]" in caplog.text
    secret_part = key.split(".")[2]
    for text in [caplog.text, repr(mailer), *map(str, errors), *map(repr, errors)]:
        assert key not in text and secret_part not in text
    assert mask_secret(key) in repr(mailer)


def test_sender_may_carry_a_display_name(sendgrid_server: SendGridServer) -> None:
    mailer = SendGridMailer(
        sendgrid_server.api_key, "Poster Shop <shop@example.com>", api_base=sendgrid_server.url
    )

    mailer.send(poster_email())

    assert sendgrid_server.messages[0].body["from"] == {
        "email": "shop@example.com",
        "name": "Poster Shop",
    }


@pytest.mark.parametrize("sender", ["", "shop", "shop@example.com\r\nBcc: x@example.com"])
def test_invalid_sender_is_refused_at_construction(sender: str) -> None:
    with pytest.raises(ValueError, match="from address"):
        OutboxMailer(Path("unused"), sender)


def test_empty_api_key_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="empty"):
        SendGridMailer("", "shop@example.com")


# --- outbox -------------------------------------------------------------------------------------


def read_eml(path: Path) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    return message


def test_outbox_writes_a_parseable_eml_with_both_parts(tmp_path: Path) -> None:
    outbox = OutboxMailer(tmp_path / "outbox", "shop@example.com")

    message_id = outbox.send(poster_email())

    [path] = (tmp_path / "outbox").iterdir()
    assert path.suffix == ".eml"
    message = read_eml(path)
    assert message["Message-ID"] == message_id
    assert message["To"] == "customer@example.com"
    assert message["From"] == "shop@example.com"
    assert message["Subject"] == "Your poster is ready: Grandma's laugh"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and LINK in text.get_content()
    assert html is not None and LINK in html.get_content()


def test_outbox_sender_keeps_its_display_name(tmp_path: Path) -> None:
    OutboxMailer(tmp_path, "Poster Shop <shop@example.com>").send(poster_email())

    [path] = tmp_path.iterdir()
    assert read_eml(path)["From"] == "Poster Shop <shop@example.com>"


def test_outbox_headers_cannot_be_injected_through_the_title(tmp_path: Path) -> None:
    outbox = OutboxMailer(tmp_path, "shop@example.com")

    outbox.send(poster_email(title="Mum\r\nBcc: attacker@example.com"))

    [path] = tmp_path.iterdir()
    message = read_eml(path)
    assert message["Bcc"] is None
    assert message["Subject"] == "Your poster is ready: Mum Bcc: attacker@example.com"


def test_outbox_file_names_sort_by_time_and_leave_no_temp_files(tmp_path: Path) -> None:
    outbox = OutboxMailer(tmp_path, "shop@example.com")

    ids = [outbox.send(poster_email(title=f"Poster {n}")) for n in range(5)]

    paths = sorted(tmp_path.iterdir())
    assert all(p.suffix == ".eml" for p in paths)
    assert [read_eml(p)["Message-ID"] for p in paths] == ids


def test_outbox_refuses_an_invalid_recipient_without_writing(tmp_path: Path) -> None:
    error = failure(OutboxMailer(tmp_path, "shop@example.com"), poster_email(to="nobody"))

    assert error.error_class is ErrorClass.BAD_INPUT
    assert list(tmp_path.iterdir()) == []


def test_outbox_that_cannot_be_created_is_transient(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the directory should be")

    error = failure(OutboxMailer(blocker, "shop@example.com"))

    assert error.error_class is ErrorClass.EMAIL_TRANSIENT
    assert "outbox" in error.message
