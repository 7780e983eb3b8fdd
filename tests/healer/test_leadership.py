"""Leadership of singleton work (healer.jobs.leadership) against the real PostgreSQL: replicas are
Leadership instances on engines of their own, as separate processes have; a leader's death is its
backend terminated by the server (pg_terminate_backend), as when its process is killed or its
connection cut. Then the scheduler running a singleton job only where it leads, what a
follower reports, and what a leader reports while its database check fails (the daemon as built)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from checks.base import Status, run_check
from checks.scheduler import SchedulerCheck
from healer import db
from healer.config import Settings
from healer.daemon import Daemon
from healer.health.metrics import Metrics
from healer.jobs.leadership import Leadership, Standing, leadership_for, role_key
from healer.jobs.scheduler import RunOutcome, Scheduler
from tests.eventually import eventually
from tests.fakes.tcp_proxy import TcpProxy

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


def test_a_leader_whose_database_check_fails_claims_no_role_until_the_database_answers_again(
    pg_proxy: TcpProxy, pg_url: str, replicas: Callable[[str], Leadership], engines: Callable[[], Engine],
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # The daemon as built (its monitor, listeners, /health and healer_leader), not started: the
    # test runs its database check and takes its roles as its jobs would. Its database is reached
    # through the proxy, cut for its outage while another replica still reaches the server.
    caplog.set_level(logging.INFO, logger="healer.jobs.leadership")
    daemon = Daemon(Settings.from_env({
        "DATABASE_URL": pg_proxy.replace_port(pg_url), "HEALER_DATA_DIR": str(tmp_path),
        "STRIPE_SECRET_KEY": "sk_test_leadership", "STRIPE_WEBHOOK_SECRET": "whsec_leadership"}))
    other = replicas("replica-b")
    try:
        client = TestClient(daemon.operator_app)

        def claims() -> tuple[bool, bool, float | None, Standing]:
            """What /health's `leader`, roles(), healer_leader and the page's reading say of stuck."""
            leader = client.get("/health").json()["leader"]["stuck"]
            exported = daemon.metrics.registry.get_sample_value("healer_leader", {"job": "stuck"})
            return leader, daemon.leadership.roles()["stuck"], exported, daemon.leadership.view().standings["stuck"]

        assert daemon.health.run("database").status is Status.OK
        assert daemon.leadership.lead("stuck") and not other.lead("stuck")  # each one's sweep, one period
        assert claims() == (True, True, 1, Standing.LEADS)

        pg_proxy.cut()  # the leader's database is gone: its sweep is skipped from now on, lead() not asked
        eventually(lambda: daemon.health.run("database").status is Status.FAILING, what="the database check to fail")

        # Its lock went with its connection: another replica takes the role, and this one must
        # not claim it as well, long before the stuck sweep's next period.
        eventually(lambda: other.lead("stuck"), what="replica b to take stuck over")
        assert claims() == (False, False, 0, Standing.NO_DATABASE)
        assert any(line.startswith("Lost leadership of stuck (the database check is failing")
                   for line in lines(caplog, logging.WARNING))

        other.release()  # replica b stops; the database comes back for this one
        pg_proxy.restore()
        eventually(lambda: daemon.health.run("database").status is Status.OK, what="the database check to pass")

        # Asked again once its check passes (a new lock connection, not the dead one), not at the
        # sweep's next period: it leads again, as the server's lock table says.
        assert claims() == (True, True, 1, Standing.LEADS)
        found = holder(engines(), "stuck")
        assert found is not None and found[1].startswith("healer stuck leader ")
    finally:
        daemon.shutdown()
