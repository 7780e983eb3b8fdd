"""Log lines: JSON (one object per line, for a log collector) or text (for a terminal), written to
stderr from the stdlib `logging` calls healer makes everywhere. Configured once per process, by
`healer.cli.main`, from HEALER_LOG_FORMAT.

JSON is structlog's ProcessorFormatter over the stdlib records, so no `log.info(...)` call changes:
`ts` (RFC 3339, UTC), `level`, `logger`, `msg`, then the fields that apply:
- `order_id`, `step`, `attempt`, `error_class`, `check`, `action`: bound with structlog.contextvars
  where the work runs (fulfilment.pipeline, checks.base and healer.health.monitor,
  healer.remediation); a context variable is per thread, so each is bound on the thread doing the
  work, and shows on that thread's lines only. The same names passed as a record's `extra` count too;
- the access log's `extra` (healer.http.observe): `listener`, `client`, `method`, `route`, `status`,
  `duration_ms`, `response_bytes`;
- `trace_id`, `span_id`: the current OpenTelemetry span's, when there is one (healer.tracing);
- `exception`: the traceback, as text.
Text is the line healer has always written (`time level logger: message`), without the fields.

No line carries a secret: the handler's RedactingFilter formats each message and traceback through
the configuration's Redactor, as before, and every field of a JSON line goes through it as well.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from opentelemetry import trace

from fulfilment.secrets import RedactingFilter, Redactor
from healer.config import LogFormat

# Fields that code binds (structlog.contextvars) or passes as `extra`; a record's other attributes
# (uvicorn's `color_message`, say) stay out of the line.
BOUND_FIELDS = ("order_id", "step", "attempt", "error_class", "check", "action")
ACCESS_FIELDS = ("listener", "client", "method", "route", "status", "duration_ms", "response_bytes")
FIRST = ("ts", "level", "logger", "msg")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Libraries that narrate every request at INFO: their warnings are all an operator needs.
NOISY = ("botocore", "boto3", "urllib3", "s3transfer", "apscheduler.executors", "apscheduler.scheduler", "stripe")

EventDict = MutableMapping[str, Any]


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is at the time of the line (as logging's own last-resort
    handler does), so a test that captures stderr, or a second configuration, never leaves a line
    going to a stream that was replaced. Also how `configure` finds the handler it installed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(level: str, log_format: LogFormat, redact: Redactor | None = None) -> None:
    """Send every record at `level` and above to stderr in `log_format`, scrubbed by `redact`.
    Called again (commands run in one process by tests), it replaces what it installed before."""
    redact = redact or Redactor()
    handler = _Stderr()
    handler.setFormatter(json_formatter(redact) if log_format is LogFormat.JSON else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter(redact))
    root = logging.getLogger()
    for installed in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(installed)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def json_formatter(redact: Redactor) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.ExtraAdder(allow=BOUND_FIELDS + ACCESS_FIELDS),
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.EventRenamer("msg"),
            _trace_ids,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _Redact(redact),
            _first_fields_first,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )


def _trace_ids(_logger: object, _method: str, event: EventDict) -> EventDict:
    """The span the line was logged in, if any: the line and its trace find each other."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = trace.format_trace_id(context.trace_id)
        event["span_id"] = trace.format_span_id(context.span_id)
    return event


class _Redact:
    """Every text field through the Redactor: an `extra` or bound value is as able to carry a
    secret (a URL with its password) as the message the RedactingFilter already scrubbed."""

    def __init__(self, redact: Redactor) -> None:
        self.redact = redact

    def __call__(self, _logger: object, _method: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.redact(value)
        return event


def _first_fields_first(_logger: object, _method: str, event: EventDict) -> EventDict:
    # A reader scanning raw lines sees when, how bad, where and what before the fields.
    return {**{key: event[key] for key in FIRST if key in event}, **event}
