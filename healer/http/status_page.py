"""The operator's status page, `GET /`, an order's timeline, `GET /orders/{id}`, and the retry
button's form, `POST /orders/{id}/retry`: HTML rendered on the server for a person on call, on the
operator listener only.

No JavaScript and nothing loaded from elsewhere: one HTML document per page, its stylesheet inline
under a per-response nonce (the Content-Security-Policy refuses anything else), readable on a
phone. The status page reloads itself (meta refresh); the order page does not, because it holds
the retry form and a reload would wipe a half-typed token. The retry button is on the order page
for that reason: the status page links each order in `needs_attention` to it.

The retry is the API's (`healer.orders.retry`) behind the same admin token, compared in constant
time, sent as a password field of an ordinary form; the answer is a 303 back to the order page
with a flag naming the status it resumes at, never text taken from the request. The token itself
is what stops another site's page from submitting the form: it cannot know it.

What the pages show is assembled by healer.http.status_data; this module is routes and rendering.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from fulfilment.errors import one_line
from fulfilment.models import OrderStatus, utcnow
from fulfilment.pipeline import OrderNotFound
from healer import __version__, orders
from healer.http import status_data
from healer.http.auth import same_secret

if TYPE_CHECKING:
    from healer.http.operator import OperatorContext

log = logging.getLogger(__name__)

REFRESH_SECONDS = 10
MAX_FORM_BYTES = 4096  # a token field and a little more
RETRY_REASON = "retry requested on the status page"
FORM_TYPE = "application/x-www-form-urlencoded"
# An id as typed (whole, or a unique prefix) that names no single order: see _id_problem.
ORDER_ID_ERRORS = (ValueError, orders.UnknownOrderId, orders.AmbiguousOrderId)
# Stripe's zero-decimal currencies: their amounts are in whole units, not hundredths.
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())


def status_page_routes(app: FastAPI, ctx: OperatorContext) -> None:
    """`/`, `/orders/{id}` and the retry form, on the operator app. None is in the OpenAPI document:
    they are pages for people, like /docs and /runbook, not an API for clients."""
    admin_enabled = ctx.admin_token is not None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def status(request: Request) -> Response:
        page = status_data.status_page(ctx.sessions, ctx.health, ctx.notices, ctx.pages, ctx.redact)
        return render(request, "status.html", refresh=REFRESH_SECONDS, page=page, now=page.generated_at,
                      admin_enabled=admin_enabled, sla_seconds=ctx.pages.order_sla_seconds)

    @app.get("/orders/{order_id}", response_class=HTMLResponse, include_in_schema=False)
    def order(request: Request, order_id: str, retried: str | None = None) -> Response:
        try:
            return _order(request, ctx, order_id, _retried_flash(retried))
        except SQLAlchemyError as error:
            return _unavailable(request, error)

    @app.post("/orders/{order_id}/retry", response_class=HTMLResponse, include_in_schema=False)
    async def retry(request: Request, order_id: str) -> Response:
        form = await _form(request)
        if isinstance(form, Response):
            return form
        if ctx.admin_token is None:
            return message(request, 403, "Retry is off",
                           "HEALER_ADMIN_TOKEN is not set on this daemon, so nothing can be retried from "
                           "this page. Run `healer orders retry ID` where the daemon runs.")
        if not same_secret(form.get("token", ""), ctx.admin_token.value):
            log.warning("Retry of order %r on the status page refused: wrong admin token", order_id[:64])
            return message(request, 403, "Wrong admin token",
                           "The token given is not this daemon's HEALER_ADMIN_TOKEN. Nothing was changed.")
        try:
            return await run_in_threadpool(_retry, request, ctx, order_id)
        except SQLAlchemyError as error:
            return _unavailable(request, error)


def _order(request: Request, ctx: OperatorContext, given: str, flash: str | None) -> Response:
    try:
        found = orders.resolve_id(ctx.sessions, given)
    except ORDER_ID_ERRORS as error:
        return _id_problem(request, error)
    page = status_data.order_page(ctx.sessions, found, ctx.admin_token is not None, ctx.redact)
    if page is None:
        return message(request, 404, "No such order", f"No order has the id {found}.")
    return render(request, "order.html", page=page, now=utcnow(), flash=flash)


def _retry(request: Request, ctx: OperatorContext, given: str) -> Response:
    try:
        found = orders.resolve_id(ctx.sessions, given)
    except ORDER_ID_ERRORS as error:
        return _id_problem(request, error)
    try:
        status = orders.retry(ctx.pipeline, found, RETRY_REASON)
    except OrderNotFound:
        return message(request, 404, "No such order", f"No order has the id {found}.")
    except orders.NothingToRetry as nothing:
        return message(request, 409, "Nothing to retry", f"Order {found}: {nothing}. Nothing was changed.",
                       back=f"/orders/{found}")
    return RedirectResponse(f"{_root(request)}/orders/{found}?retried={status.value}", status_code=303)


def _id_problem(request: Request, error: Exception) -> Response:
    """What the API answers for an id that names no single order, as a page: 404, 409 or 422."""
    if isinstance(error, orders.UnknownOrderId):
        return message(request, 404, "No such order", str(error))
    if isinstance(error, orders.AmbiguousOrderId):
        return message(request, 409, "More than one order", str(error))
    return message(request, 422, "Not an order id", str(error))


def _retried_flash(retried: str | None) -> str | None:
    # Only a status name is taken from the URL, and the sentence is ours: a link cannot make the
    # page say anything else.
    if retried not in {status.value for status in OrderStatus}:
        return None
    return f"Re-queued: the order resumes at {retried}. The timeline below shows each step as it runs."


async def _form(request: Request) -> dict[str, str] | Response:
    """The urlencoded form, bounded; an answer for anything else."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM_TYPE:
        return message(request, 415, "Not a form", f"Send the retry form as {FORM_TYPE}.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return message(request, 413, "Form too large", f"The retry form is at most {MAX_FORM_BYTES} bytes.")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return message(request, 400, "Malformed form", "The form could not be read.")
    return {name: values[0] for name, values in fields.items()}


def _unavailable(request: Request, error: SQLAlchemyError) -> Response:
    log.error("Database unavailable while answering %s %s: %s", request.method, request.url.path, one_line(error))
    answer = message(request, 503, "Database unavailable",
                     "The database did not answer, so this page cannot be shown; try again shortly. "
                     "The status page shows the database check.")
    answer.headers["Retry-After"] = "5"
    return answer


# -- rendering -----------------------------------------------------------------------------------------


def message(request: Request, code: int, title: str, text: str, back: str = "/") -> Response:
    """A page of one sentence, for refusals and errors (instead of the API's JSON)."""
    return render(request, "message.html", status_code=code, title=title, text=text, back=back)


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> Response:
    nonce = secrets.token_urlsafe(16)
    body = ENVIRONMENT.get_template(template).render(
        root=_root(request), nonce=nonce, version=__version__, refresh=context.pop("refresh", None), **context)
    return HTMLResponse(body, status_code=status_code, headers=headers(nonce))


def headers(nonce: str) -> dict[str, str]:
    return {
        # Nothing runs and nothing is fetched: the inline stylesheet under this response's nonce,
        # the empty data: icon (so the browser does not ask for /favicon.ico), forms to this listener.
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; "
                                    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "Cache-Control": "no-store",  # always the current state; and the pages show internals
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")  # behind a proxy's path prefix


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def clock(value: datetime | str | None, now: datetime | None = None) -> str:
    """A moment as an operator reads it, in UTC: `2026-11-26 03:04:05 UTC`, or `03:04:05 UTC`
    when it is within a day of `now` (given), where the date says nothing."""
    moment = _as_datetime(value)
    if moment is None:
        return "never"
    recent = now is not None and abs((now - moment).total_seconds()) < 86400
    return moment.astimezone(UTC).strftime("%H:%M:%S UTC" if recent else "%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | str | None, now: datetime) -> str:
    moment = _as_datetime(value)
    return "never" if moment is None else f"{span((now - moment).total_seconds())} ago"


def span(seconds: float | None) -> str:
    """A duration in the two largest units that matter: `42 s`, `5 min 3 s`, `3 h 12 min`, `2 d 4 h`."""
    if seconds is None:
        return "–"
    whole = max(0, int(seconds))
    for size, unit, smaller, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "min"), (60, "min", 1, "s")):
        if whole >= size:
            rest = (whole % size) // smaller
            return f"{whole // size} {unit}" + (f" {rest} {small_unit}" if rest else "")
    return f"{whole} s"


def latency(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def money(amount: tuple[str, int]) -> str:
    currency, minor = amount
    if currency.lower() in ZERO_DECIMAL:
        return f"{minor:,} {currency.upper()}"
    return f"{minor / 100:,.2f} {currency.upper()}"


# The colour a status word is shown in (always beside the word): the same few across checks,
# orders, story lines, remediations, reconciliation and webhooks.
TONES = {
    **dict.fromkeys(("ok", "success", "completed", "applied"), "ok"),
    **dict.fromkeys(("failing", "failure", "gave_up", "escalated", "needs_attention", "no_database"), "failing"),
    **dict.fromkeys(("warning", "failed", "waiting", "late", "refused"), "warning"),
}


def tone(value: str | None) -> str:
    return TONES.get(value or "", "other")


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("healer.http", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters.update(clock=clock, ago=ago, span=span, latency=latency, money=money, tone=tone)
    environment.tests["unavailable"] = lambda value: isinstance(value, status_data.Unavailable)
    return environment


ENVIRONMENT = _environment()
