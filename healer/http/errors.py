"""Error answers shared by both listeners: a database outage is a 503 with `Retry-After`, and no
exception text ever reaches a response body (it goes to the log, redacted there)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from fulfilment.errors import one_line

log = logging.getLogger(__name__)

UNAVAILABLE = "temporarily unavailable, try again shortly"
INTERNAL = "internal error; it has been logged"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SQLAlchemyError)
    async def database_unavailable(request: Request, error: SQLAlchemyError) -> JSONResponse:
        log.error("Database unavailable while answering %s %s: %s", request.method, route_of(request),
                  one_line(error))
        return JSONResponse({"detail": UNAVAILABLE}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.error("Unexpected error answering %s %s", request.method, route_of(request), exc_info=error)
        return JSONResponse({"detail": INTERNAL}, status_code=500)


def route_of(request: Request) -> str:
    """The route's template (`/download/{token}`), never the path itself: paths carry tokens."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "(no route)"))
