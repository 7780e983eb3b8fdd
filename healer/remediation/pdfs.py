"""rerender_pdf: a completed order whose download link finds its PDF gone (lost, deleted, a broken
stored key) has it rendered again from its permanent files, in the background; a few tries per
order per day, then escalated. No second email: the customer has the link already."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from structlog.contextvars import bound_contextvars

from fulfilment.errors import StepError, one_line
from healer.remediation.audit import Action, Audit, Result

log = logging.getLogger(__name__)


class PdfRestorer:
    """A download link finds its PDF gone (deleted, lost, a broken stored key): the poster is
    rendered again from the order's permanent files, in the background, and the customer is told
    to come back in a minute. While a check the render step needs is failing (S3, assets, disk,
    memory), nothing is tried and the customer is told the same. Per order and `window_seconds`,
    by any daemon: `max_attempts` successful renders (a PDF that keeps vanishing is a storage
    problem) or `max_attempts` failed ones (its files are gone too) and it is escalated, once.
    """

    def __init__(
        self, rerender: Callable[[uuid.UUID], str], audit: Audit, *, render_blocked: Callable[[], str | None] =
        lambda: None, max_attempts: int = 3, window_seconds: float = 86400.0,
    ) -> None:
        self.rerender = rerender  # fulfilment.pipeline.Pipeline.rerender
        self.render_blocked = render_blocked  # the failing check the render step waits on, if any
        self.audit = audit
        self.max_attempts = max_attempts
        self.window_seconds = window_seconds
        self._running: set[uuid.UUID] = set()
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerender")

    def on_missing(self, order_id: uuid.UUID, why: str) -> bool:
        """True: the link works again shortly (a render is under way, or waits on a check that
        is failing); False: a human must act."""
        target, reason = str(order_id), f"the download link's PDF is unavailable: {why}"[:500]
        with self._lock:
            if order_id in self._running:
                return True
        try:
            if self.audit.dry_run:
                self._once(target, reason, Result.DRY_RUN, "would render the poster again from the order's files")
                return False
            if (blocked := self.render_blocked()) is not None:
                log.info("PDF of order %s is rendered again once %s", order_id, blocked)
                return True  # no attempt spent: what fails is not this order
            if given_up := self._given_up(target):
                self._once(target, reason, Result.ESCALATED, given_up)
                return False
        except SQLAlchemyError as error:
            log.warning("PDF of order %s not rendered again: %s", order_id, one_line(error))
            return False
        with self._lock:
            if order_id in self._running:
                return True
            self._running.add(order_id)
        try:
            self._threads.submit(self._run, order_id, reason)
        except RuntimeError:  # shutting down
            with self._lock:
                self._running.discard(order_id)
            return False
        return True

    def _given_up(self, target: str) -> str | None:
        hours = f"{self.window_seconds / 3600:g} h"
        if len(lost := self._since(target, (Result.SUCCESS,))) >= self.max_attempts:
            return (f"rendered again {len(lost)} time(s) in {hours} and lost each time: check the bucket's "
                    "lifecycle rules and who deletes from pdfs/")
        if len(failed := self._since(target, (Result.FAILURE,))) >= self.max_attempts:
            return f"rendering it again failed {len(failed)} time(s) in {hours}: see the failures' detail"
        return None

    def _run(self, order_id: uuid.UUID, reason: str) -> None:
        # Its own thread: the remediator's binding stays on the customer's request.
        with bound_contextvars(action=Action.RERENDER_PDF.value, order_id=str(order_id)):
            self._rerender(order_id, reason)

    def _rerender(self, order_id: uuid.UUID, reason: str) -> None:
        try:
            key = self.rerender(order_id)
        except StepError as error:
            self.audit.record(Action.RERENDER_PDF, str(order_id), reason, Result.FAILURE,
                              f"{error.error_class}: {error.message}")
        except Exception as error:
            log.exception("Rendering the PDF of order %s again failed", order_id)
            self.audit.record(Action.RERENDER_PDF, str(order_id), reason, Result.FAILURE, one_line(error))
        else:
            self.audit.record(Action.RERENDER_PDF, str(order_id), reason, Result.SUCCESS,
                              f"rendered again from the order's files and stored at {key}")
        finally:
            with self._lock:
                self._running.discard(order_id)

    def _since(self, target: str, results: Sequence[Result]) -> list[float]:
        since = datetime.fromtimestamp(time.time() - self.window_seconds, UTC)
        return self.audit.attempts_since(Action.RERENDER_PDF, target, results, since)

    def _once(self, target: str, reason: str, result: Result, detail: str) -> None:
        """One row per order and window, however often the customer clicks."""
        if not self._since(target, (result,)):
            self.audit.record(Action.RERENDER_PDF, target, reason, result, detail)

    def shutdown(self) -> None:
        """Drop renders not started; finish (and record) the one under way."""
        self._threads.shutdown(wait=True, cancel_futures=True)
