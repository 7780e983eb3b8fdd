"""Three `healer run` replicas on one PostgreSQL (tests/faults/replicas.py): 60 paid orders arrive
while S3 and SendGrid fail for a while, the replica leading reconciliation is SIGKILLed and started
again, and the next leader gets SIGTERM and is started again. Order work is shared through the
orders' leases; reconciliation runs on one replica at a time and moves within one period of its
leader's death. The run happens once, in a module fixture; each test judges one promise of it.
bench/replicas.py runs the same scenario with 300 orders and prints the numbers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from healer import db
from tests.fakes.db_fixtures import empty_tables
from tests.fakes.render_fixtures import copy_assets
from tests.fakes.s3_fixtures import moto_client, unique_bucket_name
from tests.fakes.stripe_server import FakeStripeServer
from tests.faults.ledger import Verdict, judge
from tests.faults.replicas import ReplicaPlan, ReplicaRecord, ReplicaRun
from tests.faults.scenario import Peers
from tests.faults.sendgrid_tap import TappedSendGrid

PLAN = ReplicaPlan(orders=60, faults=True)
# The scheduler's tick may come late on a loaded machine: a takeover is due at the follower's next
# period, which this allows to be late by half a period more.
TAKEOVER_SLACK = 1.5

# Serial: its takeover bound is a time, which a test running beside it would stretch.
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(300)]


@dataclass(frozen=True)
class Outcome:
    record: ReplicaRecord
    verdict: Verdict


def _never_restarted() -> None:
    raise AssertionError("the replica run never restarts PostgreSQL")


@pytest.fixture(scope="module")
def outcome(pg_url: str, moto_server: str, stripe_server_session: FakeStripeServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    work = tmp_path_factory.mktemp("replicas")
    engine = db.make_engine(pg_url, pool_size=4)
    empty_tables(engine)  # rows of other tests would be worked by these daemons too
    stripe_server_session.reset()
    bucket = unique_bucket_name("healer-replicas")
    moto_client(moto_server).create_bucket(Bucket=bucket)
    try:
        with TappedSendGrid() as sendgrid:
            peers = Peers(db_url=pg_url, moto_url=moto_server, bucket=bucket, sendgrid=sendgrid,
                          stripe=stripe_server_session, assets_dir=copy_assets(work / "assets"), work_dir=work,
                          restart_database=_never_restarted)
            record = ReplicaRun(PLAN, peers, engine, log=_log).run()
            verdict = judge(record.run, peers, engine)
        _log(f"handovers: {record.handovers}")
        yield Outcome(record, verdict)
    finally:
        stripe_server_session.reset()
        empty_tables(engine)  # rows of other tests would be worked by these daemons too
        engine.dispose()


def _log(line: str) -> None:
    print(f"[replicas {time.strftime('%H:%M:%S')}] {line}", flush=True)


def _tail(record: ReplicaRecord, lines: int = 30) -> str:
    return "\n".join(f"--- {i.log_path.name}\n" + "\n".join(i.log_path.read_text().splitlines()[-lines:])
                     for slot in record.run.slots for i in slot.incarnations)


def test_every_order_is_completed_with_its_files_despite_the_faults(outcome: Outcome) -> None:
    record, verdict = outcome.record, outcome.verdict
    assert record.run.converged, f"{verdict.lost[:10]}\n{_tail(record)}"
    assert verdict.lost == [] and verdict.completed == PLAN.orders
    assert verdict.missing_files == []
    faults = verdict.faults
    assert faults["s3_403_answers"] and faults["s3_500_answers"], faults
    assert faults["sendgrid_401_answers"] and faults["sendgrid_429_answers"] and faults["sendgrid_5xx_answers"], faults
    assert verdict.http_500s == 0, verdict.responses
    assert all(code == 0 for code in record.run.stop_codes), record.run.stop_codes


def test_order_work_is_shared_and_no_order_is_worked_by_two_replicas_at_once(outcome: Outcome) -> None:
    verdict = outcome.verdict
    assert verdict.overlaps == [], verdict.overlaps[:10]
    assert verdict.double_ok == [], verdict.double_ok[:10]
    assert verdict.held_leases == [], verdict.held_leases[:10]


def test_duplicate_emails_come_only_from_the_kill(outcome: Outcome) -> None:
    verdict = outcome.verdict
    assert verdict.unexplained_duplicates == [], verdict.unexplained_duplicates
    assert verdict.duplicates == verdict.duplicates_after_kill <= PLAN.workers  # what the killed one had in flight
    assert verdict.emails == verdict.completed + verdict.duplicates


def test_reconciliation_runs_on_one_replica_per_period(outcome: Outcome) -> None:
    record = outcome.record
    runs = record.reconcile_runs
    assert len({run.replica for run in runs}) >= 2, runs
    # The runner changes only when its leader dies: never a run by another replica in between.
    assert record.runner_changes == len(record.handovers) == 2, runs
    # One run per period in all, bar a run at each handover (the new leader runs as it takes over).
    assert len(runs) <= record.reconcile_window / PLAN.reconcile_seconds + 1 + len(record.handovers), runs
    # At the end, each singleton job is led by exactly one replica, as its /health says.
    assert {role: len(names) for role, names in record.claims.items()} == {"reconcile": 1, "stuck": 1}, record.claims


def test_leadership_moves_within_one_period_of_the_leaders_death(outcome: Outcome) -> None:
    handovers = outcome.record.handovers
    assert [h.signal for h in handovers] == ["SIGKILL", "SIGTERM"]
    for handover in handovers:
        assert handover.taken_by is not None and handover.taken_by != handover.leader, handover
        assert handover.seconds is not None and handover.seconds <= PLAN.reconcile_seconds + TAKEOVER_SLACK, handover
