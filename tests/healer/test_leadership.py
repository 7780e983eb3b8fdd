"""Leadership of singleton work (healer.jobs.leadership) against the real PostgreSQL: replicas are
Leadership instances on engines of their own, as separate processes have; a leader's death is its
backend terminated by the server (pg_terminate_backend), as when its process is killed or its
connection cut. Then the scheduler running a singleton job only where it leads, and what a
follower reports."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, text

from checks.base import Status, run_check
from checks.scheduler import SchedulerCheck
from healer import db
from healer.health.metrics import Metrics
from healer.jobs.leadership import Leadership, leadership_for, role_key
from healer.jobs.scheduler import RunOutcome, Scheduler
from tests.eventually import eventually

INTERVAL = 0.1


@pytest.fixture
def engines(pg_url: str) -> Iterator[Callable[[], Engine]]:
    """Engines of their own, one per replica, disposed of at the end."""
    made: list[Engine] = []

    def make() -> Engine:
        made.append(db.make_engine(pg_url, pool_size=2))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


@pytest.fixture
def replicas(engines: Callable[[], Engine]) -> Iterator[Callable[[str], Leadership]]:
    made: list[Leadership] = []

    def make(owner: str) -> Leadership:
        made.append(leadership_for(engines(), owner))
        return made[-1]

    yield make
    for leadership in made:
        leadership.release()


def holder(engine: Engine, role: str) -> tuple[int, str] | None:
    """The backend holding `role`'s lock in this database (the server is shared) and its
    application_name, from the server's tables."""
    high, low = divmod(role_key(role), 1 << 32)
    with engine.connect() as connection:
        row = connection.execute(text(
            "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"high": high, "low": low}).first()
    return (row.pid, row.application_name) if row else None


def terminate(engine: Engine, pid: int) -> None:
    """The leader's death as the server sees it; returns once the backend is gone (its locks freed)."""
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "healer.jobs.leadership" and r.levelno == level]


def test_one_replica_leads_and_another_takes_over_at_its_next_period_when_the_leader_dies(
    replicas: Callable[[str], Leadership], engines: Callable[[], Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="healer.jobs.leadership")
    observer = engines()
    a, b = replicas("replica-a"), replicas("replica-b")

    assert a.lead("reconcile") and not b.lead("reconcile")
    assert a.lead("reconcile") and not b.lead("reconcile"), "each period: the leader keeps it, the follower waits"
    assert (a.roles(), b.roles()) == ({"reconcile": True}, {"reconcile": False})
    found = holder(observer, "reconcile")
    assert found is not None and found[1] == "healer reconcile leader replica-a"  # who leads, for an operator

    terminate(observer, found[0])

    assert b.lead("reconcile"), "the lock died with the leader's connection: taken at the next period"
    assert not a.lead("reconcile") and not a.leads("reconcile")
    assert not a.lead("reconcile")
    [lost] = lines(caplog, logging.WARNING)  # said once, however many periods it follows
    assert lost.startswith("Lost leadership of reconcile (its database connection failed: OperationalError: ")
    assert lines(caplog, logging.INFO) == ["Leading reconcile now: this replica runs it until it stops or "
                                           "loses the database"] * 2
    assert (holder(observer, "reconcile") or (0, ""))[1] == "healer reconcile leader replica-b"


def test_each_role_is_led_on_its_own_and_a_released_role_is_taken_over(
    replicas: Callable[[str], Leadership], engines: Callable[[], Engine],
) -> None:
    a, b = replicas("replica-a"), replicas("replica-b")
    assert a.lead("reconcile") and b.lead("stuck")
    assert not b.lead("reconcile") and not a.lead("stuck")

    a.release()  # a replica stopping (SIGTERM): its roles are free at once

    assert holder(engines(), "reconcile") is None
    assert b.lead("reconcile") and b.roles() == {"reconcile": True, "stuck": True}
    assert not a.lead("reconcile") and a.roles() == {"reconcile": False, "stuck": False}, \
        "a job still finishing on a stopped replica never takes a role back"


def test_on_sqlite_the_one_process_leads_every_role(sqlite_engine: Engine) -> None:
    leadership = leadership_for(sqlite_engine, "demo")
    assert leadership.lead("reconcile") and leadership.lead("stuck") and leadership.lead("reconcile")
    assert leadership.roles() == {"reconcile": True, "stuck": True}


def test_healer_leader_says_which_roles_this_replica_leads(replicas: Callable[[str], Leadership]) -> None:
    a, b = replicas("replica-a"), replicas("replica-b")
    b.declare("containers")  # declared, not asked yet: reported as not led from start-up
    assert a.lead("reconcile") and not b.lead("reconcile")
    metrics_a, metrics_b = Metrics(), Metrics()
    metrics_a.watch_leadership(a.roles)
    metrics_b.watch_leadership(b.roles)

    def leader(metrics: Metrics, job: str) -> float | None:
        return metrics.registry.get_sample_value("healer_leader", {"job": job})

    assert (leader(metrics_a, "reconcile"), leader(metrics_b, "reconcile")) == (1, 0)
    assert leader(metrics_b, "containers") == 0 and leader(metrics_a, "containers") is None


class Counting:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.calls += 1


def test_a_singleton_job_runs_on_the_leader_only_and_its_follower_is_neither_late_nor_dead(
    replicas: Callable[[str], Leadership],
) -> None:
    leaderships = [replicas("replica-a"), replicas("replica-b")]
    jobs = [Counting(), Counting()]
    schedulers = [Scheduler(leadership=leadership) for leadership in leaderships]
    assert leaderships[0].lead("reconcile")  # replica a leads from the start
    for scheduler, job in zip(schedulers, jobs, strict=True):
        scheduler.add("reconcile", job, INTERVAL, depends_on=(), singleton=True)
        scheduler.start()
    try:
        leader, follower = schedulers
        eventually(lambda: jobs[0].calls >= 5 and follower.jobs()[0].runs >= 5, what="five periods on both")
        assert jobs[1].calls == 0
        [state] = follower.jobs()
        assert state.following and state.last_outcome is RunOutcome.FOLLOWING and state.last_success is None
        # Dead after two 0.1 s intervals without a success, were it this replica's to run.
        check = SchedulerCheck(jobs=follower.jobs, started_at=follower.started_at, min_interval_seconds=INTERVAL,
                               failing_intervals=2)
        result = run_check(check)
        assert result.status is Status.OK and result.detail == (
            "no periodic jobs run here; another replica leads reconcile"), result.detail
        assert result.data["jobs_following"] == 1

        leader.shutdown()
        leaderships[0].release()

        eventually(lambda: jobs[1].calls >= 1, what="the follower to take the job over")
        assert not follower.jobs()[0].following and run_check(check).status is Status.OK
        alive, why = follower.liveness()
        assert alive, why
    finally:
        for scheduler in schedulers:
            scheduler.shutdown()
