"""Error answers shared by both listeners: no request gets a traceback for an answer.

- A database outage is a 503 with `Retry-After` (an exception handler: the route's transaction
  was rolled back, so nothing changed).
- Input that broke something it should not have (undecodable text, nesting deeper than Python
  follows) is a 400 and one WARNING line: the request was bad, not healer.
- Anything else is a bug: a 500 with a fixed sentence, logged once with its traceback (redacted by
  the log handlers) and counted in `healer_http_requests_total{code="500"}`.

The last two are an ASGI middleware (`Unexpected`), not a Starlette exception handler: Starlette
re-raises an exception after its catch-all handler has answered, so the server logged a second,
unredacted traceback for every such request.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fulfilment.errors import one_line

log = logging.getLogger(__name__)

UNAVAILABLE = "temporarily unavailable, try again shortly"
INTERNAL = "internal error; it has been logged"
MALFORMED = "malformed request"
# Raised by decoding what a client sent; never by healer's own state.
BAD_INPUT_ERRORS: tuple[type[Exception], ...] = (UnicodeError, RecursionError)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SQLAlchemyError)
    async def database_unavailable(request: Request, error: SQLAlchemyError) -> JSONResponse:
        log.error("Database unavailable while answering %s %s: %s", request.method, route_of(request.scope),
                  one_line(error))
        return JSONResponse({"detail": UNAVAILABLE}, status_code=503, headers={"Retry-After": "5"})

    app.add_middleware(Unexpected)


class Unexpected:
    """Turns an exception no handler took into a 400 (bad input) or a logged 500 (a bug)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False

        async def sending(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:
            route = route_of(scope)
            if isinstance(error, BAD_INPUT_ERRORS):
                log.warning("Malformed request refused on %s %s: %s", scope["method"], route, one_line(error))
                status, detail = 400, MALFORMED
            else:
                log.error("Unexpected error answering %s %s", scope["method"], route, exc_info=error)
                status, detail = 500, INTERNAL
            if answered:
                return  # the status line is out: all that is left is to end the response
            await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


def route_of(scope: Scope) -> str:
    """The route's template (`/download/{token}`), never the path itself: paths carry tokens."""
    return str(getattr(scope.get("route"), "path", "(no route)"))
