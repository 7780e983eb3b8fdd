"""Pins the fake SendGrid's wire behaviour, through the real `sendgrid` library where it can go."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from tests.eventually import eventually
from tests.fakes.sendgrid_server import READ_ONLY_SCOPES, SendGridServer

GRANT_INVALID = {
    "errors": [
        {
            "field": None,
            "message": "The provided authorization grant is invalid, expired, or revoked",
            "help": None,
        }
    ]
}


def client(server: SendGridServer, key: str | None = None) -> SendGridAPIClient:
    return SendGridAPIClient(key or server.api_key, host=server.url)


def mail(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "customer@example.com"}]}],
        "from": {"email": "shop@example.com"},
        "subject": "Your poster is ready",
        "content": [
            {"type": "text/plain", "value": "Download: https://shop.example/download/t"},
            {"type": "text/html", "value": "<a href='https://shop.example/download/t'>x</a>"},
        ],
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}


def send_error(server: SendGridServer, body: Any, key: str | None = None) -> HTTPError:
    with pytest.raises(HTTPError) as caught:
        client(server, key).send(body)
    return caught.value


def fields(error: HTTPError) -> list[str | None]:
    return [item["field"] for item in error.to_dict["errors"]]


def test_api_key_has_sendgrids_shape(sendgrid_server: SendGridServer) -> None:
    assert re.fullmatch(r"SG\.[\w-]{22}\.[\w-]{43}", sendgrid_server.api_key)


def test_valid_mail_is_accepted_with_202_and_a_message_id(sendgrid_server: SendGridServer) -> None:
    response = client(sendgrid_server).send(mail())

    assert response.status_code == 202
    assert response.body == b""
    message_id = response.headers["X-Message-Id"]
    assert re.fullmatch(r"[\w-]{22}", message_id)
    [message] = sendgrid_server.messages
    assert message.message_id == message_id
    assert message.to == ("customer@example.com",)
    assert message.from_email == "shop@example.com"
    assert message.subject == "Your poster is ready"
    assert message.text is not None and "download/t" in message.text
    assert message.html is not None and "<a href" in message.html


def test_each_personalization_is_one_message(sendgrid_server: SendGridServer) -> None:
    two = [{"to": [{"email": "a@example.com"}]}, {"to": [{"email": "b@example.com"}]}]

    client(sendgrid_server).send(mail(personalizations=two))

    assert [m.to for m in sendgrid_server.messages] == [("a@example.com",), ("b@example.com",)]


def test_missing_personalizations_is_400(sendgrid_server: SendGridServer) -> None:
    error = send_error(sendgrid_server, mail(personalizations=None))

    assert error.status_code == 400
    assert fields(error) == ["personalizations"]
    assert sendgrid_server.messages == []


def test_invalid_recipient_is_400_naming_the_field(sendgrid_server: SendGridServer) -> None:
    body = mail(personalizations=[{"to": [{"email": "not-an-address"}]}])

    error = send_error(sendgrid_server, body)

    assert error.status_code == 400
    [item] = error.to_dict["errors"]
    assert item["message"] == "Does not contain a valid address."
    assert item["field"] == "personalizations.0.to.0.email"
    assert item["help"].startswith("http://sendgrid.com/docs/")


def test_every_problem_is_reported_at_once(sendgrid_server: SendGridServer) -> None:
    error = send_error(sendgrid_server, mail(**{"from": None, "subject": None, "content": None}))

    assert fields(error) == ["from.email", "subject", "content"]


def test_subject_in_every_personalization_replaces_the_top_level_one(
    sendgrid_server: SendGridServer,
) -> None:
    personalized = [{"to": [{"email": "a@example.com"}], "subject": "Per recipient"}]

    client(sendgrid_server).send(mail(subject=None, personalizations=personalized))

    assert sendgrid_server.messages[0].subject == "Per recipient"


def test_html_before_text_is_400(sendgrid_server: SendGridServer) -> None:
    swapped = list(reversed(mail()["content"]))

    error = send_error(sendgrid_server, mail(content=swapped))

    assert error.status_code == 400
    assert "text/plain must be first" in error.to_dict["errors"][0]["message"]


def test_empty_content_value_is_400(sendgrid_server: SendGridServer) -> None:
    error = send_error(sendgrid_server, mail(content=[{"type": "text/plain", "value": ""}]))

    assert fields(error) == ["content.0.value"]


def test_malformed_json_is_400_bad_request(sendgrid_server: SendGridServer) -> None:
    status, _, body = raw(sendgrid_server, "POST", "/v3/mail/send", b"{not json")

    assert status == 400
    assert json.loads(body) == {"errors": [{"message": "Bad Request", "field": None, "help": None}]}


def test_oversized_body_is_413(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.max_body_bytes = 200

    error = send_error(sendgrid_server, mail())

    assert error.status_code == 413


def test_unknown_key_is_401_with_sendgrids_body(sendgrid_server: SendGridServer) -> None:
    error = send_error(sendgrid_server, mail(), key="SG.unknown.key")

    assert error.status_code == 401
    assert error.to_dict == GRANT_INVALID


def test_missing_authorization_is_401(sendgrid_server: SendGridServer) -> None:
    status, _, body = raw(sendgrid_server, "GET", "/v3/scopes", auth=None)

    assert status == 401
    assert json.loads(body)["errors"][0]["message"] == "authorization required"


def test_revoked_key_is_401_until_restored(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.set_key_valid(False)
    assert send_error(sendgrid_server, mail()).status_code == 401

    sendgrid_server.set_key_valid(True)
    assert client(sendgrid_server).send(mail()).status_code == 202


def test_key_without_mail_send_scope_is_403(sendgrid_server: SendGridServer) -> None:
    key = sendgrid_server.add_key(READ_ONLY_SCOPES)

    error = send_error(sendgrid_server, mail(), key=key)

    assert error.status_code == 403
    assert error.to_dict["errors"][0]["message"] == "access forbidden"


def test_scopes_lists_the_keys_scopes(sendgrid_server: SendGridServer) -> None:
    limited = sendgrid_server.add_key(READ_ONLY_SCOPES)

    full = client(sendgrid_server).client.scopes.get().to_dict
    partial = client(sendgrid_server, limited).client.scopes.get().to_dict

    assert "mail.send" in full["scopes"]
    assert partial == {"scopes": list(READ_ONLY_SCOPES)}


def test_scopes_with_unknown_key_is_401(sendgrid_server: SendGridServer) -> None:
    with pytest.raises(HTTPError) as caught:
        client(sendgrid_server, "SG.nope.nope").client.scopes.get()

    assert caught.value.status_code == 401


def test_unknown_path_is_404(sendgrid_server: SendGridServer) -> None:
    status, _, _ = raw(sendgrid_server, "GET", "/v3/nothing")

    assert status == 404


def test_fail_next_answers_that_many_requests_then_recovers(
    sendgrid_server: SendGridServer,
) -> None:
    sendgrid_server.fail_next(500, count=2)

    assert send_error(sendgrid_server, mail()).status_code == 500
    assert send_error(sendgrid_server, mail()).status_code == 500
    assert client(sendgrid_server).send(mail()).status_code == 202
    assert [r.status for r in sendgrid_server.requests] == [500, 500, 202]


def test_fail_next_can_target_one_path(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(503, path="/v3/mail/send")

    assert client(sendgrid_server).client.scopes.get().status_code == 200
    assert send_error(sendgrid_server, mail()).status_code == 503


def test_429_carries_rate_limit_headers(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(429)

    error = send_error(sendgrid_server, mail())

    assert error.status_code == 429
    assert error.headers["X-RateLimit-Remaining"] == "0"
    assert int(error.headers["X-RateLimit-Limit"]) > 0
    assert int(error.headers["X-RateLimit-Reset"]) > time.time()


def test_gateway_errors_are_html_like_the_edge_proxy(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(502)

    error = send_error(sendgrid_server, mail())

    assert error.status_code == 502
    assert error.headers["Content-Type"] == "text/html"


def test_fail_next_with_a_message_gives_that_error_item(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.fail_next(400, message="Does not contain a valid address.", field="x")

    error = send_error(sendgrid_server, mail())

    assert error.to_dict["errors"] == [
        {"message": "Does not contain a valid address.", "field": "x", "help": None}
    ]


def test_delay_slows_every_answer(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.set_delay(0.3)

    started = time.monotonic()
    client(sendgrid_server).send(mail())

    assert time.monotonic() - started >= 0.3


def test_hang_never_answers_until_switched_off(sendgrid_server: SendGridServer) -> None:
    sendgrid_server.set_hang()
    with pytest.raises(TimeoutError):
        raw(sendgrid_server, "GET", "/v3/scopes", timeout=0.3)

    sendgrid_server.set_hang(False)
    status, _, _ = raw(sendgrid_server, "GET", "/v3/scopes")
    assert status == 200


def test_concurrent_sends_are_all_stored(sendgrid_server: SendGridServer) -> None:
    threads = [
        threading.Thread(target=client(sendgrid_server).send, args=(mail(),)) for _ in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({m.message_id for m in sendgrid_server.messages}) == 10


def test_stop_returns_promptly_while_a_request_hangs() -> None:
    server = SendGridServer().start()
    server.set_hang()
    hung = threading.Thread(
        target=lambda: _ignore(lambda: raw(server, "GET", "/v3/scopes", timeout=5)), daemon=True
    )
    hung.start()
    eventually(lambda: server.held == 1, what="the request to be held by the hung server")

    started = time.monotonic()
    server.stop()

    assert time.monotonic() - started < 2


def raw(
    server: SendGridServer,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    auth: str | None = "default",
    timeout: float = 5,
) -> tuple[int, dict[str, str], bytes]:
    """A request below the library, for what the library cannot send (bad JSON, no auth)."""
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = f"Bearer {server.api_key if auth == 'default' else auth}"
    request = urllib.request.Request(server.url + path, body, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _ignore(action: Any) -> None:
    try:
        action()
    except Exception:
        pass
