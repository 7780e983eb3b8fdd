"""The operator listener's probes and health: `/livez`, `/readyz` (Kubernetes-style plain text) and
`/health`, `/health/{check}` (JSON), all answered from the scheduler and the monitor's cache, so
none waits on a probe, and all redacted.

`?exclude=` takes the names of this daemon's checks (an enum in the schema): anything else, a typo
or a newline and a bracket that would read as a line of its own (`[+]fake ok`) once echoed into the
probe's text, is refused with 422, so a misconfigured probe fails where its operator sees it. A
check that is not critical matches no line: Kubernetes' warning line says so.

The routes and their dependencies are coroutines: they only read memory (the monitor's, the
scheduler's and the leadership's locks are never held across a probe or a query), so they run on
the event loop. A plain `def` would send each of them (route and dependencies alike) through
the thread pool, a hop that costs more than the answer and has kubelets and load balancers
queue behind every other thread-pool route.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at run time,
# and `exclude`'s (the checks of this daemon) is made per app, a name only the enclosing function has.
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict

from checks.base import Status
from fulfilment.secrets import Redactor
from healer.health.monitor import CheckReport as MonitorReport
from healer.health.monitor import HealthMonitor, Readiness
from healer.http.openapi import plain_text, problem

NO_STORE = {"Cache-Control": "no-store"}


# The probes' parameters are the routes' own, checked in the route, not FastAPI dependencies:
# solving a dependency (its own four kinds of parameter, its cache key) per request was most of
# what a probe cost the event loop, kubelets and load balancers calling it every few seconds.
Verbose = Annotated[str | None, Query(description="present (any value, `?verbose` too): a line per check")]


def verbose_given(request: Request, verbose: str | None) -> bool:
    """Whether `?verbose` was given. Given twice it is refused like any malformed parameter:
    a scalar sent as a list means the caller built the query wrong."""
    if verbose is not None and len(request.query_params.getlist("verbose")) > 1:
        raise RequestValidationError([{"type": "too_long", "loc": ("query", "verbose"),
                                       "msg": "verbose may be given once", "input": None}])
    return verbose is not None


def exclude_query(names: tuple[str, ...]) -> Any:
    """The `?exclude=` parameter: names of this daemon's checks (an enum in the schema; `checked_exclusions`
    refuses the rest). A default, not a default_factory: pydantic asks a factory's signature whether
    it takes the validated data on every request without the parameter (inspect parsing `list`'s
    text signature was half of what /readyz cost)."""
    return Query(description="a check whose failure does not count (repeatable)",
                 json_schema_extra={"items": {"type": "string", "enum": list(names)}})


def checked_exclusions(exclude: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """`exclude` if each is one of `names`, else 422 naming the ones that are not."""
    unknown = [{"type": "enum", "loc": ("query", "exclude", index), "input": None,
                "msg": f"not a check of this daemon; its checks: {', '.join(names) or 'none'}"}
               for index, name in enumerate(exclude) if name not in names]
    if unknown:
        raise RequestValidationError(unknown)
    return exclude


class CheckReport(BaseModel):
    """One check as the monitor reports it. More fields may follow: clients must ignore them."""

    model_config = ConfigDict(extra="allow")

    name: str
    status: str  # ok, warning, failing, disabled, skipped; "pending" before its first run
    latency_seconds: float | None
    detail: str
    remedy: str
    runbook: str
    checked_at: str | None
    data: dict[str, Any]
    last_success: str | None
    critical: bool
    interval_seconds: float
    timeout_seconds: float
    failure_threshold: int
    consecutive_failures: int
    probe_status: str | None


class HealthReport(BaseModel):
    """Every check, the worst status among them, how this daemon runs (embedded defaults), and
    which singleton work (reconcile, stuck, containers...) this replica leads."""

    status: str  # ok, warning, failing, unknown: what `healer check` says of the same results
    checks: dict[str, CheckReport]
    notices: list[str]
    # The daemon's singleton roles -> whether this replica leads each (healer_leader{job}).
    leader: dict[str, bool] | None = None


HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": HealthReport,
          "description": "no critical check is failing (`status` may still be `warning` or `failing`: "
                         "a check that is not critical)"},
    503: {"model": HealthReport, "description": "a critical check is failing: the same report"},
}


def probe_routes(app: FastAPI, liveness: Callable[[], tuple[bool, str]], health: HealthMonitor | None,
                 redact: Redactor) -> None:
    """Kubernetes-style liveness and readiness, answered from the scheduler and the check cache."""
    names = tuple(health.names) if health else ()

    @app.get("/livez", response_class=PlainTextResponse, summary="The process and its scheduler run",
             responses={200: plain_text("alive"), 503: plain_text("not alive: why")})
    async def livez(request: Request, verbose: Verbose = None) -> PlainTextResponse:
        alive, detail = liveness()
        if verbose_given(request, verbose):
            body = f"[{'+' if alive else '-'}]scheduler {'ok' if alive else 'failed: ' + detail}\n"
            body += f"livez check {'passed' if alive else 'failed'}\n"
        else:
            body = "ok" if alive else f"failed: {detail}"
        return PlainTextResponse(redact(body), status_code=200 if alive else 503)

    @app.get("/readyz", response_class=PlainTextResponse, summary="The critical checks pass (from the cache)",
             responses={200: plain_text("ready"), 503: plain_text("not ready: a line per critical check")})
    async def readyz(request: Request, verbose: Verbose = None,
                     exclude: Annotated[tuple[str, ...], exclude_query(names)] = ()) -> PlainTextResponse:
        lines = verbose_given(request, verbose)
        exclude = checked_exclusions(exclude, names)
        readiness = health.ready(exclude) if health else Readiness(True, ())
        return PlainTextResponse(redact(readyz_body(readiness, verbose=lines)),
                                 status_code=200 if readiness.ready else 503, headers=NO_STORE)


def health_routes(app: FastAPI, health: HealthMonitor | None, notices: tuple[str, ...], redact: Redactor,
                  leaders: Callable[[], Mapping[str, bool]] | None = None) -> None:
    """Every check as JSON (status, latency, last success, detail, remedy), redacted; `leaders`:
    the singleton roles and whether this replica leads each."""

    # The last answer, with what it was made from: (generation, leadership), body, code. Kept until
    # a check records a result or the leadership changes: redacting and encoding the same reports
    # again was most of the cost of an answer, for the kubelets and monitors polling it.
    rendered: tuple[tuple[int, tuple[tuple[str, bool], ...]], bytes, int] | None = None

    @app.get("/health", response_model=HealthReport, responses=HEALTH_RESPONSES,
             summary="Every check: status, latency, last success, detail, remedy")
    async def health_report() -> Response:
        nonlocal rendered
        leading = dict(leaders()) if leaders is not None else None
        # The generation first (see HealthMonitor.generation); the body never depends on the query.
        made_from = (health.generation if health is not None else 0, tuple((leading or {}).items()))
        if rendered is None or rendered[0] != made_from:
            rendered = (made_from, *health_body(health, notices, redact, leading))
        _, body, code = rendered
        return Response(body, status_code=code, media_type=JSONResponse.media_type, headers=NO_STORE)

    @app.get("/health/{check}", response_model=CheckReport, responses={404: problem("no such check")},
             summary="One check")
    async def health_of(check: str) -> JSONResponse:
        if health is None or check not in health.names:
            known = ", ".join(health.names) if health else "none"
            raise HTTPException(404, f"unknown check {check[:64]!r}; checks here: {known}")
        return JSONResponse(redacted_json(health.report(check).as_dict(), redact), headers=NO_STORE)


def health_body(health: HealthMonitor | None, notices: tuple[str, ...], redact: Redactor,
                leading: dict[str, bool] | None) -> tuple[bytes, int]:
    """/health's body (JSON, redacted) and status code, from the monitor's reports now."""
    body: dict[str, Any] = {"status": "ok", "checks": {}}
    reports = health.reports() if health is not None else []
    if health is not None:
        body = {"status": health.overall().value, "checks": {report.name: report.as_dict() for report in reports}}
    body["notices"] = list(notices)
    if leading is not None:
        body["leader"] = leading
    # The code answers what an HTTP monitor can act on: this daemon cannot do its work. A
    # failing check that is not critical is in the body (and `status`), not worth a 503.
    code = 503 if critical_failing(reports) else 200
    return bytes(JSONResponse(redacted_json(body, redact)).body), code


def critical_failing(reports: Iterable[MonitorReport]) -> list[str]:
    """The critical checks whose reported status is failing: what makes `ready()` false, bar the
    checks not run yet (a daemon starting up is not failing). From the reports the body shows, so
    that the code and the body agree."""
    return [report.name for report in reports if report.check.critical
            and report.result is not None and report.result.status is Status.FAILING]


def redacted_json(value: Any, redact: Redactor) -> Any:
    """Every string in a JSON-shaped value, redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redacted_json(item, redact) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted_json(item, redact) for item in value]
    return value


def readyz_body(readiness: Readiness, *, verbose: bool) -> str:
    """Kubernetes' format: `[+]name ok` / `[-]name failed: reason` lines, then the verdict.

    A passing probe that did not ask for detail gets a bare "ok"; a failing one always gets the
    lines, so whoever reads a 503 sees why.
    """
    if readiness.ready and not verbose:
        return "ok"
    lines = []
    for line in readiness.lines:
        if line.excluded:
            lines.append(f"[+]{line.name} excluded: ok")
        elif line.ok:
            lines.append(f"[+]{line.name} ok")
        else:
            lines.append(f"[-]{line.name} failed: {_one_line(line.reason)}")
    if readiness.unknown_excludes and verbose:
        # Only known names get here (see `exclusions`); escaped all the same, so no name can
        # ever add a line of its own.
        names = ", ".join(_quoted(name) for name in readiness.unknown_excludes)
        lines.append(f"warn: some health checks cannot be excluded: no matches for {names}")
    lines.append(f"readyz check {'passed' if readiness.ready else 'failed'}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    # A probe's reason is its own text (an exception's message may span lines): one line each.
    return " ".join(text.split())


def _quoted(name: str) -> str:
    escaped = name.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return f'"{escaped}"'
