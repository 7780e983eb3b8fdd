"""The `database` check against real servers: the shared PostgreSQL, a private one that asks for
passwords, SQLite, and a port where nothing listens.

The shared server trusts every local connection (pg_hba.conf: `trust` on the socket and on
127.0.0.1), so no password can be wrong there. The wrong-password case runs against a private
cluster started for this module with scram-sha-256 authentication, on its own port.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from checks.base import Status, run_check
from checks.database import DatabaseCheck
from healer import db
from tests.fakes.db_fixtures import PG_ADMIN_URL
from tests.fakes.ports import free_port


@dataclass(frozen=True)
class PasswordServer:
    port: int
    user: str
    password: str

    def url(self, password: str) -> str:
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/postgres"


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        pytest.fail(f"{tool} not found under /usr/lib/postgresql: install Debian's postgresql package "
                    "(scripts/test.sh does)")
    return found[-1]


@pytest.fixture(scope="module")
def password_pg() -> Iterator[PasswordServer]:
    """A private PostgreSQL cluster that authenticates with scram-sha-256 passwords."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="healer-pgpw-"))
    password = "pw-" + secrets.token_urlsafe(18)
    (base / "pwfile").write_text(password + "\n")
    if as_postgres:
        owner = pwd.getpwnam("postgres")
        for path in (base, base / "pwfile"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", free_port()
    try:
        _run([*as_postgres, _pg_bin("initdb"), "-D", str(data), "-U", "healer_pw", f"--pwfile={base / 'pwfile'}",
              "--auth=scram-sha-256"])
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([*as_postgres, _pg_bin("pg_ctl"), "-D", str(data), "-w", "-t", "30", "-l", str(base / "log"),
              "-o", options, "start"])
        yield PasswordServer(port, "healer_pw", password)
    finally:
        subprocess.run([*as_postgres, _pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"could not start a private PostgreSQL for the password test ({command[-1]}): "
                    f"{done.stderr.strip()[-800:]}")


def check_for(url: str, **config: object) -> tuple[DatabaseCheck, Engine]:
    engine = db.make_engine(url)
    config.setdefault("head_revision", db.head_revision())
    return DatabaseCheck(engine=engine, **config), engine  # type: ignore[arg-type]


def test_ok_on_postgresql_with_latency_and_schema_at_head(pg_engine: Engine) -> None:
    result = run_check(DatabaseCheck(engine=pg_engine, head_revision=db.head_revision()))

    assert result.status is Status.OK, result
    assert result.detail.startswith("SELECT 1 in ")
    assert f"schema at head ({db.head_revision()})" in result.detail
    assert 0 < result.data["query_seconds"] < 5


def test_schema_behind_head_fails_with_the_upgrade_command_then_ok_after_upgrade(tmp_path: Path) -> None:
    check, engine = check_for(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")

    before = run_check(check)
    db.upgrade(engine)
    after = run_check(check)

    assert before.status is Status.FAILING
    assert before.detail.startswith("migrations not at head: schema empty")
    assert "`healer db upgrade`" in before.remedy
    assert after.status is Status.OK, after
    engine.dispose()


def test_wrong_password_is_named_and_never_shown(password_pg: PasswordServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-" + secrets.token_urlsafe(12)
    check, engine = check_for(password_pg.url(wrong), head_revision=None)

    result = run_check(check)

    assert result.status is Status.FAILING, result
    assert result.detail.startswith("wrong password: ")
    assert "password in DATABASE_URL is wrong for user healer_pw" in result.remedy
    shown = f"{result.detail} {result.remedy} {check!r} {caplog.text}"
    assert wrong not in shown and password_pg.password not in shown
    assert f"healer_pw:***@127.0.0.1:{password_pg.port}" in result.detail
    engine.dispose()


def test_right_password_is_ok(password_pg: PasswordServer) -> None:
    engine = db.make_engine(password_pg.url(password_pg.password))

    result = run_check(DatabaseCheck(engine=engine))

    assert result.status is Status.OK, result
    assert "schema not compared" in result.detail
    assert password_pg.password not in result.detail
    engine.dispose()


def test_server_down_is_named_then_ok_once_the_url_points_at_a_live_server(pg_url: str) -> None:
    port = free_port()
    down, down_engine = check_for(f"postgresql://healer:secret-pw-123@127.0.0.1:{port}/shop")
    live, live_engine = check_for(pg_url)

    failing, fixed = run_check(down), run_check(live)

    assert failing.status is Status.FAILING
    assert failing.detail.startswith("server down: ")
    assert f"127.0.0.1:{port}" in failing.remedy and "start PostgreSQL" in failing.remedy
    assert "secret-pw-123" not in failing.detail + failing.remedy
    assert fixed.status is Status.OK, fixed
    down_engine.dispose()
    live_engine.dispose()


@pytest.mark.parametrize("what", ["database", "role"])
def test_missing_database_or_role_is_named(pg_url: str, what: str) -> None:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base}/no_such_db_{secrets.token_hex(4)}" if what == "database" else \
        pg_url.replace("postgres@", f"nobody_{secrets.token_hex(4)}@", 1)
    check, engine = check_for(url)

    result = run_check(check)

    assert result.status is Status.FAILING
    assert result.detail.startswith("no such user: " if what == "role" else "no such database: ")
    assert "does not exist" in result.detail and "in DATABASE_URL" in result.remedy
    engine.dispose()


def test_a_slow_answer_is_a_warning(pg_engine: Engine) -> None:
    result = run_check(DatabaseCheck(engine=pg_engine, slow_seconds=0.0))

    assert result.status is Status.WARNING
    assert result.detail.startswith("slow: SELECT 1 took ")


def alembic_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records if r.name.startswith("alembic")]


@pytest.mark.parametrize("engine_fixture", ["pg_engine", "sqlite_engine"])
def test_a_database_probe_logs_no_alembic_lines(
    request: pytest.FixtureRequest, engine_fixture: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine: Engine = request.getfixturevalue(engine_fixture)
    caplog.set_level(logging.DEBUG)
    check = DatabaseCheck(engine=engine, head_revision=db.head_revision())

    results = [run_check(check) for _ in range(3)]
    revision = db.current_revision(engine)  # what the daemon asks at start-up

    assert [r.status for r in results] == [Status.OK] * 3, results
    assert revision == db.head_revision()
    assert alembic_lines(caplog) == []


def test_the_schema_revision_is_read_without_alembic_before_and_after_migrations(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
    caplog.set_level(logging.INFO)

    before = db.current_revision(engine)
    quiet = alembic_lines(caplog)
    db.upgrade(engine)  # `healer db upgrade`: alembic still says what it does
    upgrading = alembic_lines(caplog)
    caplog.clear()
    after = db.current_revision(engine)

    assert (before, after) == (None, db.head_revision())
    assert quiet == [] and alembic_lines(caplog) == []
    assert "INFO alembic.runtime.migration: Context impl SQLiteImpl." in upgrading
    assert any("Running upgrade" in line for line in upgrading), upgrading
    engine.dispose()


def test_a_postgresql_schema_behind_the_latest_revision_fails_naming_both_until_upgraded(
    fresh_pg_engine: Engine,
) -> None:
    """What a daemon that started while its database was unreachable finds once it answers: the
    check, which every dependent waits on and readiness reads, fails until `healer db upgrade`."""
    head = db.head_revision()
    assert head is not None
    previous = ScriptDirectory(str(db.MIGRATIONS_DIR)).get_revision(head).down_revision
    assert isinstance(previous, str)
    db.upgrade(fresh_pg_engine, previous)
    check = DatabaseCheck(engine=fresh_pg_engine, head_revision=head, critical=True)

    behind = run_check(check)
    db.upgrade(fresh_pg_engine)
    upgraded = run_check(check)

    assert behind.status is Status.FAILING
    assert behind.detail == f"migrations not at head: schema at {previous}, this code expects {head}"
    assert behind.remedy.startswith("run `healer db upgrade`")
    assert "restart" not in behind.remedy  # the daemon carries on by itself once the schema is at head
    assert upgraded.status is Status.OK, upgraded
    assert f"schema at head ({head})" in upgraded.detail
