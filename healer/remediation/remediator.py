"""The remediator: the runbook's safe fixes, taken by the daemon itself, guarded, audited and counted.

Each action is driven by what the daemon already sees (`Remediator.on_check_result` listens to
the health monitor, `Remediator.observe_step` watches order steps) and refuses what is not safe:

- restart_container: a running container that carries HEALER_AUTOHEAL_LABEL *and* the compose
  project's label (so another stack on the same engine is never touched), unhealthy for
  `unhealthy_seconds` past its health start period, is restarted through the Engine API. Flap
  guard: at most `max_restarts` attempts per `window_seconds` per container; past that it is
  escalated (a row, the metric, an ERROR line) and left alone while the docker check keeps failing
  on it. OOM-killed, crashed and restart-looping containers are escalated with their exit code and
  never started by us: the engine's restart policy owns exited containers, and an OOM kill would
  only repeat. It needs its own opt-in (HEALER_AUTOHEAL_DOCKER=on): it needs the Docker socket.
- regenerate_waveform: a render that ran without the shop's waveform image (lost, expired) drew
  the wave from the audio; the PNG is then regenerated from the audio (in a render process, under
  the render limits) and written to the order's permanent waveform key, so the order's files are
  whole again.
- resume_orders: a check turned green again; orders waiting on it go now, not at their next poll.
- free_scratch: the disk check warns or fails and the scratch file system is below the disk
  check's warning level: old regular files under the scratch directory, and nothing else
  (symlinks are never followed, file systems mounted inside never entered), are deleted oldest
  first until it is above that level again.

Replicas: restart_container acts on containers every replica sees (one engine, one compose
project), so it runs on the replica that leads the `containers` role (healer.jobs.leadership),
asked at each docker check result; the others leave it alone, and a replica that takes over reads
the restarts of the window from the audit, so the flap guard holds across replicas. The others stay
local on purpose: free_scratch deletes files under this replica's own HEALER_DATA_DIR (an emptyDir
per pod, a volume per container), which its own disk check measured and no other replica can
reach; regenerate_waveform and rerender_pdf follow an order this replica works under its lease;
resume_orders answers this replica's own check turning green, with a compare-and-set any replica
may make.

Every action is a `remediations` row (healer.remediation.audit) and a count in
healer_remediations_total{action,result}. HEALER_REMEDIATION=off does nothing at all; dry-run logs
and records what it would do (result `dry_run`) and changes nothing.

Each action lives in its own module beside this one; this one routes what the daemon sees to them,
with the action's name bound (`action`, a structlog context variable: healer.logs) on the lines
logged while it runs; audit.py binds it on the line of its record, whatever the thread.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from structlog.contextvars import bound_contextvars

from checks.base import CheckResult, Status
from fulfilment.models import Outcome, Step
from fulfilment.recording import StepResult
from healer.config import RemediationMode
from healer.remediation.audit import Action, Audit
from healer.remediation.containers import ContainerHealer
from healer.remediation.pdfs import PdfRestorer
from healer.remediation.resume import OrderResumer
from healer.remediation.scratch import ScratchSweeper
from healer.remediation.waveforms import WaveformRestorer

log = logging.getLogger(__name__)

CONTAINERS = "containers"  # the leadership role of restart_container


class Remediator:
    """The actions behind one listener and one step observer; does nothing when mode is off."""

    def __init__(
        self,
        audit: Audit,
        *,
        containers: ContainerHealer | None = None,
        scratch: ScratchSweeper | None = None,
        waveforms: WaveformRestorer | None = None,
        orders: OrderResumer | None = None,
        pdfs: PdfRestorer | None = None,
        lead: Callable[[str], bool] | None = None,
    ) -> None:
        """`lead(role)`: whether this replica leads a singleton role now (Leadership.lead); None:
        it acts alone."""
        self.audit = audit
        self.containers = containers
        self.scratch = scratch
        self.waveforms = waveforms
        self.orders = orders
        self.pdfs = pdfs
        self.lead = lead

    @property
    def mode(self) -> RemediationMode:
        return self.audit.mode

    def on_check_result(self, new: CheckResult, previous: CheckResult | None) -> None:
        """healer.health.monitor.Listener: act on what the checks report."""
        if self.mode is RemediationMode.OFF:
            return
        if self.orders is not None and _turned_green(new, previous):
            assert previous is not None
            with bound_contextvars(action=Action.RESUME_ORDERS.value):
                self.orders.on_green(new, previous)
        if new.name == "docker" and self.containers is not None:
            if self.lead is None or self.lead(CONTAINERS):
                with bound_contextvars(action=Action.RESTART_CONTAINER.value):
                    self.containers.on_docker_result(new)
            else:
                self.containers.forget()  # what it saw goes stale while another replica acts
        if new.name == "disk" and self.scratch is not None:
            with bound_contextvars(action=Action.FREE_SCRATCH.value):
                self.scratch.on_disk_result(new)

    def observe_step(self, result: StepResult) -> None:
        """A Pipeline observer: runs in the worker's thread, after the step's commit."""
        if self.mode is RemediationMode.OFF or self.waveforms is None:
            return
        if result.step is not Step.RENDER or result.outcome is not Outcome.OK:
            return
        with bound_contextvars(action=Action.REGENERATE_WAVEFORM.value):
            try:
                self.waveforms.after_render(result.order_id)
            except Exception:  # a remediation bug must never stop the order it follows
                log.exception("Waveform remediation failed for order %s", result.order_id)

    def on_missing_download(self, order_id: uuid.UUID, why: str) -> bool:
        """healer.http.public: a download link's PDF is gone. True when it is being rendered again."""
        if self.mode is RemediationMode.OFF or self.pdfs is None:
            return False
        with bound_contextvars(action=Action.RERENDER_PDF.value):
            try:
                return self.pdfs.on_missing(order_id, why)
            except Exception:  # a remediation bug must never turn a customer's download into a 500
                log.exception("PDF remediation failed for order %s", order_id)
                return False

    def shutdown(self) -> None:
        if self.pdfs is not None:
            self.pdfs.shutdown()
        if self.waveforms is not None:
            self.waveforms.shutdown()

    def describe(self) -> str:
        """One line for the start-up banner."""
        if self.mode is RemediationMode.OFF:
            return "remediation off (HEALER_REMEDIATION=off)"
        enabled = ((Action.RESTART_CONTAINER, self.containers), (Action.REGENERATE_WAVEFORM, self.waveforms),
                   (Action.RESUME_ORDERS, self.orders), (Action.FREE_SCRATCH, self.scratch),
                   (Action.RERENDER_PDF, self.pdfs))
        actions = [action for action, component in enabled if component is not None]
        line = f"remediation {self.mode}: {', '.join(actions) or 'no actions'}"
        if self.containers is not None:
            p = self.containers.policy
            line += (f" (containers labelled {' and '.join(self.containers.labels)}, unhealthy for "
                     f"{p.unhealthy_seconds:g}s, at most {p.max_restarts} restart(s) per {p.window_seconds:g}s)")
        return line


def _turned_green(new: CheckResult, previous: CheckResult | None) -> bool:
    return previous is not None and previous.status is Status.FAILING and new.status in (Status.OK, Status.WARNING)
