"""Start-up tells the truth: `healer run` and `healer demo` as operators run them, in their own
processes. A database that does not answer yet is waited for (live, not ready, naming it) and used
once it answers; a schema behind is never ready; a port in use or an unwritable HEALER_DATA_DIR is
one line and exit 78 before anything is announced; the demo's suggested commands run as printed."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from healer import db
from healer.config import Settings
from healer.daemon import Daemon
from healer.demo.commands import healer_command
from healer.errors import EXIT_CONFIG, ConfigurationError
from tests.e2e.daemon import HEALER, REPO, RunningDaemon, healer_env, running_daemon
from tests.eventually import Unmet, eventually
from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop
from tests.fakes.tcp_proxy import TcpProxy

PASSWORD = "pw-never-logged-7f3a"  # the shared server trusts every local login, so any password works


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def url_of(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def cut_database(shop_env: dict[str, str], pg_proxy: TcpProxy) -> dict[str, str]:
    """The shop's environment with its database behind a proxy that is cut: down at start."""
    pg_proxy.cut()
    return healer_env(shop_env, DATABASE_URL=with_password(pg_proxy.replace_port(shop_env["DATABASE_URL"])),
                      HEALER_CHECK_INTERVAL_SECONDS="1")


def readiness(daemon: RunningDaemon) -> tuple[int, str]:
    status, _, body = daemon.ops("GET", "/readyz?verbose")
    return status, body.decode()


def database_check(daemon: RunningDaemon) -> dict[str, str]:
    checks: dict[str, dict[str, str]] = json.loads(daemon.ops("GET", "/health")[2])["checks"]
    return checks["database"]


def log_lines(daemon: RunningDaemon, level: str, logger: str) -> list[str]:
    return re.findall(rf"^\S+ \S+ {level}\s+{re.escape(logger)}: (.*)$", daemon.log(), re.MULTILINE)


def test_a_database_down_at_start_is_waited_for_then_used_without_a_restart(
    shop: Shop, cut_database: dict[str, str], pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    with running_daemon(cut_database, tmp_path / "daemon.log") as daemon:
        eventually(lambda: "[-]database failed" in readiness(daemon)[1], timeout=30,
                   what="/readyz to name the database")
        status, body = readiness(daemon)
        assert status == 503 and "[-]database failed: server down" in body, body
        assert daemon.ops("GET", "/livez")[0] == 200
        order_id = shop.paid_order()  # the shop's checkout, straight to the server

        pg_proxy.restore()
        eventually(lambda: readiness(daemon)[0] == 200, timeout=60, what="/readyz 200 once the database is back")
        eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")

        log = daemon.log()
        (said,) = [line for line in log_lines(daemon, "WARNING", "healer.daemon") if "unreachable" in line]
        assert said.startswith(f"Database postgresql://postgres:***@127.0.0.1:{pg_proxy.port}/")
        assert "starting anyway; the database check keeps trying" in said
        assert PASSWORD not in log
        assert "Traceback" not in log
        assert log_lines(daemon, "ERROR", "healer.jobs.scheduler") == []
        # The jobs waited on the check from their first run; none failed on the database itself.
        assert [line for line in log_lines(daemon, "WARNING", "healer.jobs.scheduler")
                if "could not run" in line] == []


def test_a_schema_behind_found_after_start_is_never_ready_until_upgraded(
    shop: Shop, shop_env: dict[str, str], fresh_pg_engine: Engine, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    pg_proxy.cut()
    env = healer_env(shop_env, DATABASE_URL=pg_proxy.replace_port(url_of(fresh_pg_engine)),
                     HEALER_CHECK_INTERVAL_SECONDS="1")
    with running_daemon(env, tmp_path / "daemon.log") as daemon:
        pg_proxy.restore()

        def behind() -> bool | Unmet:
            check = database_check(daemon)
            return check["detail"].startswith("migrations not at head") or Unmet(check)

        eventually(behind, timeout=30, what="the database check to find the schema behind")
        check, (status, body) = database_check(daemon), readiness(daemon)
        assert status == 503 and "[-]database failed: migrations not at head: schema empty" in body, body
        assert check["remedy"].startswith("run `healer db upgrade`")
        assert daemon.ops("GET", "/livez")[0] == 200

        db.upgrade(fresh_pg_engine)  # what the remedy says: `healer db upgrade`

        eventually(lambda: readiness(daemon)[0] == 200, timeout=60, what="/readyz 200 once the schema is at head")
        assert "Traceback" not in daemon.log()


def test_a_reachable_database_behind_still_stops_start_up_with_one_line(
    shop_env: dict[str, str], fresh_pg_engine: Engine
) -> None:
    env = healer_env(shop_env, DATABASE_URL=url_of(fresh_pg_engine))

    result = subprocess.run(HEALER + ["run"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1, result.stderr
    assert (result.stdout + result.stderr).strip().splitlines() == [
        f"healer: database schema is at nothing, code expects {db.head_revision()}: run `healer db upgrade`"
    ]


# -- a port in use -----------------------------------------------------------------------------------


def minimal_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """`healer run` on its embedded defaults, with (unused) Stripe keys, in a clean environment."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("HEALER_", "AWS_", "S3_", "STRIPE_", "SENDGRID_", "DATABASE_URL"))}
    return {**keep, "HEALER_DATA_DIR": str(tmp_path / "data"), "HEALER_HTTP_PORT": str(free_port()),
            "HEALER_OPS_PORT": str(free_port()), "STRIPE_SECRET_KEY": "sk_test_startup",
            "STRIPE_WEBHOOK_SECRET": "whsec_startup", "COLUMNS": "80", **overrides}


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process listens on (as another healer would)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(("command", "variable"), [("run", "HEALER_OPS_PORT"), ("demo", "HEALER_HTTP_PORT")])
def test_a_port_in_use_stops_start_up_with_one_line_before_anything_is_announced(
    tmp_path: Path, busy_port: int, command: str, variable: str
) -> None:
    env = minimal_env(tmp_path, **{variable: str(busy_port)})

    result = subprocess.run(HEALER + [command], env=env, capture_output=True, text=True, timeout=60)

    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIG, output
    assert output.strip().splitlines() == [
        f"healer: {variable}={busy_port}: 127.0.0.1:{busy_port} is already in use (another healer?); "
        "choose another port"
    ]
    assert not (tmp_path / "data" / "healer.sqlite3").exists()  # stopped before the database too


def test_serve_raises_the_busy_port_and_releases_the_other_one(
    tmp_path: Path, busy_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    env = minimal_env(tmp_path, HEALER_OPS_PORT=str(busy_port))
    daemon = Daemon(Settings.from_env(env))
    caplog.set_level(logging.INFO)

    with pytest.raises(ConfigurationError, match=f"^HEALER_OPS_PORT={busy_port}: 127.0.0.1:{busy_port} is already"):
        daemon.serve()

    assert [r.getMessage() for r in caplog.records if r.name.startswith(("healer", "uvicorn"))] == []
    with socket.socket() as again:  # the public listener's socket, bound first, was closed
        again.bind(("127.0.0.1", int(env["HEALER_HTTP_PORT"])))


def test_a_host_not_of_this_machine_is_one_line_naming_it(tmp_path: Path) -> None:
    env = minimal_env(tmp_path, HEALER_HTTP_HOST="192.0.2.1")  # TEST-NET-1: nobody's address
    daemon = Daemon(Settings.from_env(env))

    with pytest.raises(ConfigurationError) as raised:
        daemon.serve()

    port = env["HEALER_HTTP_PORT"]
    assert str(raised.value) == (f"HEALER_HTTP_HOST=192.0.2.1: cannot listen on 192.0.2.1:{port}: "
                                 "not an address of this machine; choose another host")


# -- an unwritable data directory ------------------------------------------------------------------------


def unwritable_dir() -> tuple[Path, str]:
    """A directory nobody may make, root included (tests run as root: a mode-0500 directory would
    not do): one under /sys. Returns it with the reason the system gives."""
    path = Path(f"/sys/healer-test-{uuid.uuid4().hex[:8]}")
    try:
        path.mkdir()
    except OSError as error:
        return path, str(error.strerror)
    path.rmdir()
    pytest.fail(f"{path} could be made here: this test needs a directory that cannot be")


@pytest.mark.parametrize("command", ["run", "demo"])
def test_an_unwritable_data_dir_is_one_line_naming_it_and_the_reason(tmp_path: Path, command: str) -> None:
    path, reason = unwritable_dir()
    env = minimal_env(tmp_path, HEALER_DATA_DIR=str(path))

    result = subprocess.run(HEALER + [command], env=env, capture_output=True, text=True, timeout=60)

    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIG, output
    assert output.strip().splitlines() == [
        f"healer: HEALER_DATA_DIR={path}: cannot write to {path}: {reason}; choose a directory healer may write to"
    ]


def test_a_data_dir_under_a_file_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    path = tmp_path / "a-file" / "data"
    env = minimal_env(tmp_path, HEALER_DATA_DIR=str(path))

    result = subprocess.run(HEALER + ["run"], env=env, capture_output=True, text=True, timeout=60)

    output = result.stdout + result.stderr
    assert result.returncode == EXIT_CONFIG, output
    (line,) = output.strip().splitlines()
    assert line.startswith("healer: ") and f"HEALER_DATA_DIR={str(path)!r}" in line and "is a file" in line


def test_the_daemon_names_a_data_dir_it_cannot_make(tmp_path: Path) -> None:
    """The same, past the settings' own check (the file appeared after they were read)."""
    settings = Settings.from_env(minimal_env(tmp_path))
    (tmp_path / "a-file").write_text("not a directory")
    path = tmp_path / "a-file" / "data"

    with pytest.raises(ConfigurationError) as raised:
        Daemon(dataclasses.replace(settings, data_dir=path))

    assert str(raised.value) == (f"HEALER_DATA_DIR={path}: cannot write to {path}: Not a directory; "
                                 "choose a directory healer may write to")


# -- the demo's suggestions ---------------------------------------------------------------------------------


def suggested(output: str, label: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith(f"{label}:")]
    return line.removeprefix(f"{label}:").strip()


def test_the_demo_that_exits_by_itself_suggests_commands_that_run_as_printed(tmp_path: Path) -> None:
    """Run as `.venv/bin/healer demo` from the checkout, with no healer on PATH and another
    database in the environment, as a newcomer with an unactivated virtualenv might."""
    typed = os.path.relpath(HEALER[0], REPO)
    no_healer = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not (Path(p) / "healer").exists())
    env = minimal_env(tmp_path, PATH=no_healer, DATABASE_URL="postgresql://nobody@127.0.0.1:1/elsewhere")

    result = subprocess.run([typed, "demo", "--orders", "2", "--exit-when-done"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=240)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Ctrl-C" not in output and "CTRL+C" not in output  # it stops by itself
    story, listing = suggested(output, "Its story"), suggested(output, "Every order")
    assert f" {REPO / typed} orders show " in story, story  # the healer that ran, wherever it is pasted
    for command in (story, listing):  # pasted into a shell like the one the demo ran in
        ran = subprocess.run(["bash", "-c", command], env=dict(env, COLUMNS="200"), cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, f"{command}\n{ran.stdout}{ran.stderr}"
        assert shlex.split(story)[-1] in ran.stdout and "completed" in ran.stdout, ran.stdout


def test_the_suggested_command_is_the_one_that_ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    venv_healer = Path(sys.executable).with_name("healer")
    monkeypatch.setenv("PATH", str(tmp_path))  # no healer on PATH

    assert healer_command(str(venv_healer)) == str(venv_healer)
    monkeypatch.chdir(venv_healer.parent)
    assert healer_command("./healer") == str(venv_healer)  # as typed, made absolute
    assert healer_command(str(REPO / "healer" / "__main__.py")) == f"{sys.executable} -m healer"

    monkeypatch.setenv("PATH", str(venv_healer.parent))
    assert healer_command(str(venv_healer)) == "healer"  # on PATH, and the one that ran


def test_a_demo_of_no_orders_is_refused_rather_than_never_done(tmp_path: Path) -> None:
    result = subprocess.run(HEALER + ["demo", "--orders", "0", "--exit-when-done"], env=minimal_env(tmp_path),
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 64, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip().splitlines() == [
        "healer: --orders 0: the demo needs at least one sample order"
    ]
