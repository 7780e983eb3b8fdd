"""The whole daemon as operators run it: `healer run` and `healer demo` in their own processes,
over real HTTP, against PostgreSQL, moto S3 and the SendGrid and Stripe servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.daemon import HEALER, REPO, RunningDaemon, healer_env, running_daemon
from tests.eventually import eventually
from tests.fakes.ports import free_port
from tests.fakes.render_fixtures import busy_rendering, render_processes
from tests.fakes.render_inputs import endless_title
from tests.fakes.shop_fixtures import Shop


@pytest.fixture
def daemon_env(shop_env: dict[str, str]) -> dict[str, str]:
    return healer_env(shop_env, PUBLIC_BASE_URL="https://shop.example")


@pytest.fixture
def daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[RunningDaemon]:
    with running_daemon(daemon_env, tmp_path / "daemon.log") as running:
        yield running


def test_customer_completion_through_the_running_daemon(shop: Shop, daemon: RunningDaemon, daemon_env: dict[str, str]) -> None:
    order_id = shop.paid_order(queued=False)

    status, _, body = daemon.request("POST", f"/api/orders/{order_id}/complete",
                                     {"X-Session-Token": f"sess-{order_id.hex}"})
    assert status == 202 and json.loads(body)["status"] == "paid"
    eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")

    order = shop.order(order_id)
    status, headers, _ = daemon.request("GET", f"/download/{order.download_token}")
    assert status == 307 and order.final_pdf_key in headers["location"]
    assert len(shop.emails_to("ada@example.com")) == 1
    log = daemon.log()
    for line in (f"Payment succeeded: {order.stripe_payment_intent_id}",
                 f"File migration completed successfully for order {order_id}",
                 f"PDF generated: pdfs/final_{order_id}.pdf",
                 "Download email sent to a…@example.com"):
        assert line in log
    status, headers, body = daemon.ops("GET", "/metrics")
    exposition = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'healer_order_completions_total{outcome="completed"} 1.0' in exposition
    assert 'healer_orders{status="completed"} 1.0' in exposition
    for name in ("AWS_SECRET_ACCESS_KEY", "SENDGRID_API_KEY", "STRIPE_SECRET_KEY", "HEALER_ADMIN_TOKEN"):
        assert daemon_env[name] not in log, name
        assert daemon_env[name] not in exposition, name
    # One access line per request (healer's: uvicorn's own is off), and the link's token in none.
    log = eventually(lambda: (text := daemon.log()).count('"GET /download/…" 307') == 1 and text,
                     timeout=10, what="the download's access-log line")
    assert order.download_token not in log and 'HTTP/1.1" 307' not in log


def test_sigterm_stops_the_daemon_cleanly_with_a_render_in_flight(
        shop: Shop, daemon_env: dict[str, str], tmp_path: Path) -> None:
    # A short time limit: the render in flight at SIGTERM is one the daemon waits for, to its end.
    # One render process: the assets check renders its canary through the pool too, and with two
    # slots it could hold the second process when the first order came.
    env = dict(daemon_env, HEALER_RENDER_TIMEOUT_SECONDS="2", HEALER_WORKERS="1")
    with running_daemon(env, tmp_path / "daemon.log") as daemon:
        done = shop.paid_order()
        eventually(lambda: shop.order(done).status == "completed", timeout=60, what="the order to complete")
        rendering = shop.paid_order(title=endless_title())
        eventually(lambda: shop.order(rendering).status == "files_migrated", timeout=60, what="its render to start")
        (process,) = render_processes(daemon.process.pid)  # the first order's, idle since, takes it
        busy_rendering(process)

        daemon.process.send_signal(signal.SIGTERM)

        assert daemon.process.wait(timeout=30) == 0, daemon.log()
        assert "healer stopped" in daemon.log()
    assert shop.order(done).lease_owner is None
    stopped = shop.order(rendering)  # the step ended at its time limit and was recorded, then the daemon
    assert stopped.lease_owner is None and stopped.last_error_class == "bad_input", stopped.last_error
    assert not process.is_running()


def test_unknown_order_and_wrong_token_over_http(shop: Shop, daemon: RunningDaemon) -> None:
    order_id = shop.paid_order(queued=False)

    assert daemon.request("POST", f"/api/orders/{uuid.uuid4()}/complete")[0] == 404
    assert daemon.request("POST", f"/api/orders/{order_id}/complete", {"X-Session-Token": "x"})[0] == 403
    assert shop.order(order_id).status == "pending_payment"


def test_bad_configuration_stops_with_one_line_naming_the_variable(daemon_env: dict[str, str]) -> None:
    env = dict(daemon_env, HEALER_WORKERS="lots")

    result = subprocess.run(HEALER + ["run"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "healer: configuration error: HEALER_WORKERS='lots' is not a whole number"
    ]


def test_demo_from_the_built_wheel_completes_its_sample_orders_in_an_empty_directory(tmp_path: Path) -> None:
    """What `pip install .` gives a new machine: healer and its poster assets from the wheel alone,
    run from a directory that holds nothing (no fonts/, templates/ or source tree beside it)."""
    wheels, site, empty = tmp_path / "wheels", tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
                   check=True, timeout=120, capture_output=True)
    (wheel,) = wheels.glob("healer-*.whl")
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=120, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALER_", "DATABASE_URL", "S3_", "STRIPE_", "SENDGRID_"))}
    # The wheel's packages first on the path; the venv still supplies the dependencies.
    env.update(PYTHONPATH=str(site), HEALER_DATA_DIR=str(tmp_path / "demo"), HEALER_HTTP_PORT=str(free_port()),
               HEALER_OPS_PORT=str(free_port()), COLUMNS="200")
    where = subprocess.run([sys.executable, "-c", "import healer, poster_assets; "
                            "print(healer.__file__); print(poster_assets.bundled_assets_dir())"],
                           env=env, cwd=empty, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(site) for path in where), where
    # The operations guide is in the wheel too: /runbook, with no source tree to read it from.
    runbook = _page_of_a_demo(env | {"HEALER_DATA_DIR": str(tmp_path / "guide")}, empty, "/runbook")
    assert 'id="healerdown"' in runbook

    result = subprocess.run([sys.executable, "-m", "healer", "demo", "--orders", "5", "--exit-when-done"],
                            env=env, capture_output=True, text=True, timeout=240, cwd=empty)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "payment verification is DISABLED" in output
    assert len(list((tmp_path / "demo" / "outbox").glob("*.eml"))) == 4
    assert len(list((tmp_path / "demo" / "store" / "pdfs").glob("final_*.pdf"))) == 4
    assert output.count("completed") >= 4 and "needs_attention" in output  # the corrupt photo
    assert sorted(p.name for p in empty.iterdir()) == []  # nothing written where it was run


def _page_of_a_demo(env: dict[str, str], cwd: Path, path: str) -> str:
    """`path` on the operator listener of a `healer demo` run as `python -m healer` in `cwd`."""
    log = Path(env["HEALER_DATA_DIR"] + ".log")
    with log.open("w") as output:
        demo = subprocess.Popen([sys.executable, "-m", "healer", "demo", "--orders", "1"], env=env, cwd=cwd,
                                stdout=output, stderr=subprocess.STDOUT)

    def page() -> str | None:
        assert demo.poll() is None, f"healer demo exited early:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{env['HEALER_OPS_PORT']}{path}", timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            return None

    try:
        return eventually(page, timeout=60, what=f"{path} from healer demo", interval=0.2)
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=60)


def test_render_processes_hold_only_the_renderer_and_die_with_a_killed_daemon(
        shop: Shop, daemon: RunningDaemon) -> None:
    order_id = shop.paid_order()
    eventually(lambda: shop.order(order_id).status == "completed", timeout=60, what="the order to complete")
    renderers = [p for p in psutil.Process(daemon.process.pid).children(recursive=True)
                 if "spawn_main" in " ".join(p.cmdline())]
    assert renderers, "no render process found under the daemon"

    for process in renderers:
        libraries = Path(f"/proc/{process.pid}/maps").read_text()
        assert "PIL/_imaging" in libraries  # the renderer is there...
        # ...and not the daemon's database layer and client libraries (~60 MiB more per process).
        assert "sqlalchemy" not in libraries and "cryptography" not in libraries, process.cmdline()

    daemon.process.kill()  # SIGKILL: no shutdown code runs
    daemon.process.wait(timeout=10)
    _, alive = psutil.wait_procs(renderers, timeout=10)
    assert alive == [], f"render processes outlived their daemon: {[p.pid for p in alive]}"
