"""The `sendgrid` check against the wire-format SendGrid server: each failure it names, and back to
ok once fixed. The key never appears unmasked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from checks.base import CheckResult, Status, run_check, run_with_timeout
from checks.sendgrid import SendGridCheck
from tests.fakes.ports import free_port
from tests.fakes.sendgrid_server import READ_ONLY_SCOPES, SendGridServer

FROM = "posters@shop.example"


def check_for(server: SendGridServer, key: str | None = None, **config: object) -> SendGridCheck:
    config.setdefault("from_email", FROM)
    return SendGridCheck(api_key=key or server.api_key, api_base=server.url, **config)  # type: ignore[arg-type]


def shown(result: CheckResult) -> str:
    return f"{result.detail} {result.remedy} {result!r}"


def test_ok_for_a_valid_key_allowed_to_send(sendgrid_server: SendGridServer) -> None:
    result = run_check(check_for(sendgrid_server))

    assert result.status is Status.OK, result
    assert "allowed to send (mail.send)" in result.detail and FROM in result.detail
    assert [(r.method, r.path) for r in sendgrid_server.requests] == [("GET", "/v3/scopes")]
    assert sendgrid_server.messages == []  # probing sends no email


def test_a_revoked_key_is_401_invalid_then_ok_once_restored(
    sendgrid_server: SendGridServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    check = check_for(sendgrid_server)
    sendgrid_server.set_key_valid(False)

    failing = run_check(check)
    sendgrid_server.set_key_valid(True)
    fixed = run_check(check)

    assert failing.status is Status.FAILING
    assert failing.detail.startswith("invalid key: SG.…") and "(401: " in failing.detail
    assert "SENDGRID_API_KEY" in failing.remedy
    assert sendgrid_server.api_key not in shown(failing) + repr(check) + caplog.text
    assert fixed.status is Status.OK


def test_a_key_without_mail_send_is_not_allowed_to_send(sendgrid_server: SendGridServer) -> None:
    read_only = sendgrid_server.add_key(READ_ONLY_SCOPES)

    failing = run_check(check_for(sendgrid_server, read_only))
    fixed = run_check(check_for(sendgrid_server, sendgrid_server.add_key()))

    assert failing.status is Status.FAILING
    assert failing.detail.startswith("not allowed to send: ") and "mail.send" in failing.detail
    assert "Mail Send" in failing.remedy
    assert read_only not in shown(failing)
    assert fixed.status is Status.OK


def test_401_and_403_are_told_apart(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(403, path="/v3/scopes")
    forbidden = run_check(check_for(sendgrid_server))
    sendgrid_server.fail_next(401, path="/v3/scopes")
    invalid = run_check(check_for(sendgrid_server))

    assert forbidden.status is invalid.status is Status.FAILING
    assert forbidden.detail.startswith("forbidden: ") and "(403: access forbidden)" in forbidden.detail
    assert invalid.detail.startswith("invalid key: ") and "(401: " in invalid.detail
    assert forbidden.remedy != invalid.remedy


def test_a_malformed_key_fails_without_asking_sendgrid(sendgrid_server: SendGridServer) -> None:
    truncated = sendgrid_server.api_key.rsplit(".", 1)[0]

    result = run_check(check_for(sendgrid_server, truncated))

    assert result.status is Status.FAILING
    assert result.detail.startswith("malformed key: ") and "SG.<id>.<secret>" in result.detail
    assert truncated not in shown(result)
    assert sendgrid_server.requests == []


def test_from_email_left_at_its_default_fails(sendgrid_server: SendGridServer) -> None:
    result = run_check(check_for(sendgrid_server, from_email="posters@localhost.localdomain"))

    assert result.status is Status.FAILING
    assert result.detail == "FROM_EMAIL not set: sending as posters@localhost.localdomain"
    assert "FROM_EMAIL" in result.remedy


def test_the_outbox_is_disabled_with_its_directory(tmp_path: Path) -> None:
    result = run_check(SendGridCheck(api_key=None, from_email=FROM, outbox_dir=tmp_path / "outbox"))

    assert result.status is Status.DISABLED
    assert result.detail.startswith("outbox: SENDGRID_API_KEY unset")
    assert str(tmp_path / "outbox") in result.detail


@pytest.mark.parametrize(("status", "expected", "prefix"), [
    (429, Status.WARNING, "rate limited (429: "),
    (503, Status.FAILING, "SendGrid unavailable (503: "),
])
def test_rate_limits_warn_and_outages_fail(
    sendgrid_server: SendGridServer, status: int, expected: Status, prefix: str
) -> None:
    sendgrid_server.fail_next(status, path="/v3/scopes")

    result = run_check(check_for(sendgrid_server))

    assert result.status is expected and result.detail.startswith(prefix)


def test_an_unreachable_api_is_named() -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    result = run_check(SendGridCheck(api_key="SG.abc_def.ghi-jkl", from_email=FROM, api_base=base))

    assert result.status is Status.FAILING
    assert result.detail.startswith(f"unreachable: {base}") and "SENDGRID_API_BASE" in result.remedy


def test_a_hung_api_is_reported_by_the_request_timeout(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.set_hang(True)

    result = run_with_timeout(check_for(sendgrid_server, request_timeout=0.5, timeout_seconds=5))

    assert result.status is Status.FAILING
    assert result.detail.startswith("not answering: ") and "0.5s" in result.detail
    assert result.latency_seconds < 3
