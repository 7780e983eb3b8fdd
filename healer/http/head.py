"""`HEAD` wherever `GET` is served: the GET's status and headers, without the body (RFC 9110 9.3.2).

FastAPI routes answer only the methods they name, so a mail client's link scanner that checks a
download link with HEAD got 405. Rather than a second route per GET (and a second operation per
GET in each OpenAPI document), this middleware runs HEAD requests as GETs and drops the body; the
`Content-Length` of the GET is kept, as HEAD requires. A route that is not GET (the webhook)
still answers HEAD with 405.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ORIGINAL_METHOD = "healer.original_method"  # the scope key of the method before this middleware
_BODY_MESSAGES = ("http.response.body", "http.response.pathsend", "http.response.zerocopysend")


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] in _BODY_MESSAGES:
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        # The access log (healer.http.observe) runs inside and says what the client asked for.
        await self.app(dict(scope, method="GET", **{ORIGINAL_METHOD: "HEAD"}), receive, headers_only)
