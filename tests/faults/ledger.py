"""Judges a fault run from what the peers hold afterwards: the orders and their stories in
PostgreSQL, the emails SendGrid accepted (and from which process), the PaymentIntents in Stripe and
the objects in S3, against what the run did (which processes were killed when, when PostgreSQL was
down).

Every duplicate email must be explained: sent by a process that was then SIGKILLed before it
recorded the send, or sent just before a commit that the PostgreSQL restart refused. Both are the
one window the design allows (a crash between SendGrid's 202 and the commit).
"""

from __future__ import annotations

import re
import statistics
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from fulfilment.models import Order, OrderEvent, OrderStatus, Outcome, Step
from fulfilment.storage import make_s3_client
from tests.faults.processes import Incarnation
from tests.faults.scenario import FaultWindow, Peers, PlacedOrder, RunRecord, retrying
from tests.faults.sendgrid_tap import Send

WORKER_PID = re.compile(r"^[^:]*:(\d+):")
FAILING_CHECK = re.compile(r"(\w+) failing")
OVERLAP_TOLERANCE_SECONDS = 0.05
# How soon after an unrecorded send a kill must come to explain it: the commit follows the 202 in
# milliseconds (a loaded 2-core machine stretches that, hence the margin).
KILL_WINDOW_SECONDS = 2.0
RESTART_MARGIN_SECONDS = 10.0
FULFILMENT_STEPS = (Step.MIGRATE_FILES.value, Step.RENDER.value, Step.EMAIL.value)


@dataclass
class Verdict:
    target: str
    orders: int
    good: int
    bad: int
    completed: int
    lost: list[str]  # good orders not completed, with where they stand
    emailed_not_completed: list[str]  # lost, though the customer got the link (the record did not)
    bad_fulfilled: list[str]  # flawed payments that got any fulfilment at all
    unverified_completions: list[str]  # completed without a succeeded, matching PaymentIntent
    missing_files: list[str]
    emails: int
    duplicates: int
    duplicates_after_kill: int
    duplicates_after_database_restart: int
    unexplained_duplicates: list[str]
    kills: int
    kills_after_202: int
    kills_in_window: int  # kills whose process had sent an email it had not recorded
    orphaned_processes: int  # render workers still alive just after their daemon was SIGKILLed
    double_ok: list[str]  # two `ok` rows for one order and step
    overlaps: list[str]  # two workers' attempts on one order at the same time
    held_leases: list[str]
    responses: Counter[str]
    latency_p50: float | None
    latency_p99: float | None
    makespan: float | None
    error_classes: Counter[str]
    waits: Counter[str]
    faults: dict[str, int]
    stripe_429s_seen: int  # log lines of the daemons where a Stripe call met a 429
    wall: float
    notes: list[str] = field(default_factory=list)

    @property
    def http_500s(self) -> int:
        return self.responses.get("500", 0)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.update(responses=dict(self.responses), error_classes=dict(self.error_classes), waits=dict(self.waits))
        return out


def judge(record: RunRecord, peers: Peers, engine: Engine) -> Verdict:
    placed = {o.id: o for o in record.orders}
    rows, events = retrying(lambda: _load(engine, list(placed)))
    by_order: dict[uuid.UUID, list[OrderEvent]] = defaultdict(list)
    for event in events:
        by_order[event.order_id].append(event)
    good = [rows[o.id] for o in record.orders if o.good and o.id in rows]
    bad = [rows[o.id] for o in record.orders if not o.good and o.id in rows]
    sends = [s for s in peers.sendgrid.sends if s.order_id and uuid.UUID(s.order_id) in placed]
    # Only healer records which process completed an order, so only its duplicates can be explained.
    duplicates = _duplicates(record, rows, by_order, sends) if record.target == "healer" else _count_only(sends)
    emailed = {uuid.UUID(s.order_id) for s in sends if s.order_id}
    latencies = sorted((r.completed_at.timestamp() - placed[r.id].placed_at)
                       for r in good if r.completed_at is not None)
    kills = [k for slot in record.slots for k in slot.kills]
    return Verdict(
        target=record.target,
        orders=len(record.orders),
        good=len(good),
        bad=len(bad),
        completed=sum(1 for r in good if r.status == OrderStatus.COMPLETED.value),
        lost=[_describe(r) for r in good if r.status != OrderStatus.COMPLETED.value]
        + [f"{o.id}: no order row" for o in record.orders if o.id not in rows],
        emailed_not_completed=[str(r.id) for r in good if r.status != OrderStatus.COMPLETED.value and r.id in emailed],
        bad_fulfilled=_bad_fulfilled(bad, by_order, sends, placed),
        unverified_completions=_unverified(good + bad, by_order, peers),
        missing_files=_missing_files(peers, [r for r in good if r.status == OrderStatus.COMPLETED.value]),
        emails=len(sends),
        duplicates=duplicates.total,
        duplicates_after_kill=duplicates.after_kill,
        duplicates_after_database_restart=duplicates.after_database,
        unexplained_duplicates=duplicates.unexplained,
        kills=len(kills),
        kills_after_202=sum(1 for k in kills if k.reason == "after-202"),
        kills_in_window=len(duplicates.killers),
        orphaned_processes=sum(i.orphans_after_kill for slot in record.slots for i in slot.incarnations),
        double_ok=_double_ok(events),
        overlaps=_overlaps(by_order),
        held_leases=[f"{r.id}: {r.lease_owner}" for r in rows.values() if r.lease_owner is not None
                     and r.status in (OrderStatus.COMPLETED.value, OrderStatus.NEEDS_ATTENTION.value)],
        responses=Counter(str(status) for o in record.orders for status in o.responses),
        latency_p50=statistics.median(latencies) if latencies else None,
        latency_p99=_percentile(latencies, 0.99),
        makespan=(max(latencies_end(good)) - record.started_at) if latencies else None,
        error_classes=Counter(e.error_class for e in events if e.error_class and e.outcome != Outcome.OK.value),
        waits=_waits(events),
        faults=_faults(record, peers),
        stripe_429s_seen=_log_lines(record, lambda line: "HTTP 429" in line and "stripe" in line.lower()),
        wall=record.finished_at - record.started_at,
    )


def _load(engine: Engine, ids: list[uuid.UUID]) -> tuple[dict[uuid.UUID, Order], list[OrderEvent]]:
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Order.__table__).where(Order.id.in_(ids))).all()}
        events = list(conn.execute(select(OrderEvent.__table__).where(OrderEvent.order_id.in_(ids))
                                   .order_by(OrderEvent.id)).all())
    return rows, events  # type: ignore[return-value]


def latencies_end(rows: list[Any]) -> list[float]:
    return [r.completed_at.timestamp() for r in rows if r.completed_at is not None]


def _describe(row: Any) -> str:
    return f"{row.id}: {row.status} ({row.last_error_step}: {row.last_error_class}: {(row.last_error or '')[:160]})"


def _percentile(values: list[float], share: float) -> float | None:
    return values[min(len(values) - 1, int(share * len(values)))] if values else None


# -- payments ---------------------------------------------------------------------------------------


def _bad_fulfilled(bad: list[Any], by_order: dict[uuid.UUID, list[Any]], sends: list[Send],
                   placed: dict[uuid.UUID, PlacedOrder]) -> list[str]:
    emailed = {uuid.UUID(s.order_id) for s in sends if s.order_id}
    found = []
    for row in bad:
        steps = {e.step for e in by_order[row.id] if e.outcome == Outcome.OK.value}
        signs = sorted(steps & set(FULFILMENT_STEPS))
        if row.status in (OrderStatus.COMPLETED.value, OrderStatus.PDF_RENDERED.value, OrderStatus.FILES_MIGRATED.value):
            signs.append(f"status {row.status}")
        if row.id in emailed:
            signs.append("emailed")
        if signs:
            found.append(f"{row.id} ({placed[row.id].flaw} via {placed[row.id].path}): {', '.join(signs)}")
    return found


def _unverified(rows: list[Any], by_order: dict[uuid.UUID, list[Any]], peers: Peers) -> list[str]:
    """Completed orders whose PaymentIntent is not succeeded for exactly this order, or unchecked."""
    found = []
    for row in rows:
        if row.status != OrderStatus.COMPLETED.value:
            continue
        intent = peers.stripe.payment_intent(row.stripe_payment_intent_id)
        problems = []
        if intent["status"] != "succeeded":
            problems.append(f"intent {intent['status']}")
        if intent["amount"] != row.amount_cents or intent["currency"] != row.currency.lower():
            problems.append(f"intent {intent['amount']} {intent['currency']}")
        if (intent.get("metadata") or {}).get("order_id") != str(row.id):
            problems.append("intent names another order")
        verified = any(e.step == Step.VERIFY_PAYMENT.value and e.outcome == Outcome.OK.value for e in by_order[row.id])
        if row.payment_verified_at is None or not verified:
            problems.append("no recorded verification")
        if problems:
            found.append(f"{row.id}: {', '.join(problems)}")
    return found


# -- emails -----------------------------------------------------------------------------------------


@dataclass
class _Duplicates:
    total: int = 0
    after_kill: int = 0
    after_database: int = 0
    unexplained: list[str] = field(default_factory=list)
    killers: set[int] = field(default_factory=set)  # pids killed with an unrecorded send


def _duplicates(record: RunRecord, rows: dict[uuid.UUID, Any], by_order: dict[uuid.UUID, list[Any]],
                sends: list[Send]) -> _Duplicates:
    slots = {slot.env["SENDGRID_API_KEY"]: slot for slot in record.slots}
    per_order: dict[uuid.UUID, list[Send]] = defaultdict(list)
    for send in sends:
        per_order[uuid.UUID(send.order_id or "")].append(send)
    result = _Duplicates()
    restarts = record.windows("postgresql restart")
    for order_id, order_sends in per_order.items():
        result.total += len(order_sends) - 1
        recorder = _recording_pid(by_order[order_id])
        for send in _unrecorded(order_sends, recorder, slots):
            incarnation = slots[send.api_key].incarnation_at(send.at) if send.api_key in slots else None
            _explain(result, order_id, send, incarnation, restarts)
    return result


def _count_only(sends: list[Send]) -> _Duplicates:
    per_order = Counter(s.order_id for s in sends)
    return _Duplicates(total=sum(n - 1 for n in per_order.values()))


def _recording_pid(events: list[Any]) -> int | None:
    for e in events:
        if e.step == Step.EMAIL.value and e.outcome == Outcome.OK.value and e.worker:
            match = WORKER_PID.match(e.worker)
            return int(match.group(1)) if match else None
    return None


def _unrecorded(sends: list[Send], recorder: int | None, slots: dict[str, Any]) -> list[Send]:
    """The sends that no commit accounts for: all but one of the recording process's."""
    unrecorded, kept_one = [], False
    for send in sorted(sends, key=lambda s: s.at, reverse=True):  # the last send is the recorded one
        incarnation = slots[send.api_key].incarnation_at(send.at) if send.api_key in slots else None
        if not kept_one and incarnation is not None and incarnation.pid == recorder:
            kept_one = True
            continue
        unrecorded.append(send)
    return unrecorded


def _explain(result: _Duplicates, order_id: uuid.UUID, send: Send, incarnation: Incarnation | None,
             restarts: list[FaultWindow]) -> None:
    # A send is recorded milliseconds after SendGrid's 202, or, when the database is down, as soon
    # as it is back. So a kill explains an unrecorded send only if it came right after it, or before
    # the end of a restart the send's commit was waiting out.
    during = [w for w in restarts if w.started_at - RESTART_MARGIN_SECONDS <= send.at <= w.ended_at + RESTART_MARGIN_SECONDS]
    deadline = max([send.at + KILL_WINDOW_SECONDS] + [w.ended_at + RESTART_MARGIN_SECONDS for w in during])
    killed_at = incarnation.ended_at if incarnation is not None and incarnation.killed else None
    if incarnation is not None and killed_at is not None and send.at <= killed_at <= deadline:
        result.after_kill += 1
        result.killers.add(incarnation.pid)
    elif during:
        result.after_database += 1
    else:
        who = f"pid {incarnation.pid}" if incarnation else "an unknown process"
        result.unexplained.append(f"order {order_id}: email sent by {who} at {send.at:.2f} never recorded")


# -- concurrency ------------------------------------------------------------------------------------


def _double_ok(events: list[Any]) -> list[str]:
    counts = Counter((e.order_id, e.step) for e in events if e.outcome == Outcome.OK.value)
    return [f"{order_id} {step}: {n} ok rows" for (order_id, step), n in counts.items() if n > 1]


def _overlaps(by_order: dict[uuid.UUID, list[Any]]) -> list[str]:
    """Attempts of one order by two workers whose running times intersect."""
    found = []
    attempts = (Outcome.OK.value, Outcome.FAILED.value, Outcome.GAVE_UP.value)
    for order_id, events in by_order.items():
        spans = sorted((e.at.timestamp() - e.duration_seconds, e.at.timestamp(), e.worker, e.step)
                       for e in events if e.worker and e.outcome in attempts)
        for (_s1, e1, w1, step1), (s2, _e2, w2, step2) in zip(spans, spans[1:], strict=False):
            if w1 != w2 and s2 < e1 - OVERLAP_TOLERANCE_SECONDS:
                found.append(f"{order_id}: {step1} by {w1} until {e1:.3f} overlaps {step2} by {w2} from {s2:.3f}")
    return found


# -- evidence that each fault happened and was seen -------------------------------------------------


def _waits(events: list[Any]) -> Counter[str]:
    waits: Counter[str] = Counter()
    for e in events:
        if e.outcome == Outcome.WAITING.value:
            waits.update(set(FAILING_CHECK.findall(e.message)))
    return waits


def _faults(record: RunRecord, peers: Peers) -> dict[str, int]:
    statuses = peers.sendgrid.answers_by_status()
    windows = Counter(w.name for w in record.faults)
    return {
        "s3_403_answers": record.proxy_injected.get(403, 0),
        "s3_500_answers": record.proxy_injected.get(500, 0),
        "sendgrid_401_answers": statuses.get(401, 0),
        "sendgrid_429_answers": statuses.get(429, 0),
        "sendgrid_5xx_answers": statuses.get(500, 0) + statuses.get(503, 0),
        "stripe_429_bursts": windows["stripe 429 burst"],
        "postgresql_restarts": windows["postgresql restart"],
        "font_removals": windows["font removed"],
        "disk_fills": windows["disk full"],
        "kills": sum(len(slot.kills) for slot in record.slots),
    }


def _log_lines(record: RunRecord, wanted: Callable[[str], bool]) -> int:
    count = 0
    for slot in record.slots:
        for incarnation in slot.incarnations:
            with incarnation.log_path.open(errors="replace") as log:
                count += sum(1 for line in log if wanted(line))
    return count


def _missing_files(peers: Peers, completed: list[Any]) -> list[str]:
    client = make_s3_client(access_key_id="shop", secret_access_key="shop-secret", region="us-east-1",
                            endpoint_url=peers.moto_url)
    keys: set[str] = set()
    for prefix in ("orders/", "pdfs/"):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=peers.bucket, Prefix=prefix):
            keys.update(item["Key"] for item in page.get("Contents", []))
    missing = []
    for row in completed:
        wanted = [f"orders/{row.id}/photo.jpg", f"orders/{row.id}/audio.wav", f"pdfs/final_{row.id}.pdf"]
        absent = [k for k in wanted if k not in keys]
        if absent or row.final_pdf_key != f"pdfs/final_{row.id}.pdf":
            missing.append(f"{row.id}: {', '.join(absent) or 'final_pdf_key ' + str(row.final_pdf_key)}")
    return missing
