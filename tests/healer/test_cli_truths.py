"""The `healer` command never misleads: one line with the fix for every error (a traceback only with
--debug), exit codes from one table, every configuration problem at once, ids that are never cut
and may be shortened, `--json` everywhere, and nothing created by a command that only looks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.fakes.ports import free_port
from tests.fakes.shop_fixtures import Shop

ROOT = Path(__file__).resolve().parents[2]
_CONFIG_PREFIXES = ("HEALER_", "AWS_", "S3_", "SENDGRID_", "STRIPE_", "DATABASE_URL", "FROM_EMAIL",
                    "PUBLIC_BASE_URL", "SESSION_EXPIRATION")


def healer(env: dict[str, str], *args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healer", *args], env=dict(env, COLUMNS=str(columns)),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    return {**base, "HEALER_DATA_DIR": str(tmp_path / "var"), **extra}


# -- configuration ---------------------------------------------------------------------------------


def test_config_lists_every_variable_with_its_source_and_masks_secrets(tmp_path: Path) -> None:
    token = "t" * 40
    env = clean_env(tmp_path, HEALER_WORKERS="3", HEALER_ADMIN_TOKEN=token,
                    DATABASE_URL="postgresql://shop:db-password-9@db.internal:5432/shop")

    done = healer(env, "config", "--json")

    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    variables = {v["name"]: v for v in body["variables"]}
    assert variables["HEALER_WORKERS"] == {"name": "HEALER_WORKERS", "value": "3", "source": "env", "problem": None}
    assert variables["HEALER_LEASE_SECONDS"]["source"] == "default"
    assert variables["S3_BUCKET"]["source"] == variables["SENDGRID_API_KEY"]["source"] == "embedded"
    assert variables["DATABASE_URL"]["value"].startswith("postgresql://shop:") and "db.internal" in variables["DATABASE_URL"]["value"]
    assert "db-password-9" not in done.stdout and token not in done.stdout
    assert body["problems"] == []
    assert not (tmp_path / "var").exists()


def test_config_lists_every_problem_at_once_and_exits_78(tmp_path: Path) -> None:
    env = clean_env(tmp_path, HEALER_WORKERS="lots", HEALER_HTTP_PORT="99999", SENDGRID_API_KEY="not-sg-secret-1234",
                    HEALER_RETRY_BASE_SECONDS="60", HEALER_RETRY_MAX_SECONDS="10")

    text, as_json = healer(env, "config"), healer(env, "config", "--json")

    assert text.returncode == as_json.returncode == 78
    problems = [line for line in text.stderr.splitlines() if line.startswith("healer: configuration error: ")]
    assert len(problems) == 4, text.stderr
    for name in ("HEALER_WORKERS", "HEALER_HTTP_PORT", "SENDGRID_API_KEY", "HEALER_RETRY_MAX_SECONDS"):
        assert any(name in line for line in problems), name
    assert len(json.loads(as_json.stdout)["problems"]) == 4
    assert "not-sg-secret-1234" not in text.stdout + text.stderr + as_json.stdout


def test_every_other_command_reports_every_problem_too_and_exits_78(tmp_path: Path) -> None:
    done = healer(clean_env(tmp_path, HEALER_WORKERS="lots", HEALER_LEASE_SECONDS="-1"), "orders", "list")

    assert done.returncode == 78
    assert [line.split(":")[2].split("=")[0].strip() for line in done.stderr.splitlines()] == [
        "HEALER_LEASE_SECONDS", "HEALER_WORKERS"]


# -- read-only commands create nothing ------------------------------------------------------------


@pytest.mark.parametrize("command", [["orders", "list"], ["orders", "show", "abcd1234"], ["remediations"],
                                     ["orphans", "list"], ["orders", "retry", "--all"]])
def test_from_the_wrong_directory_a_command_says_where_it_looked_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    done = healer(clean_env(tmp_path), *command)

    assert done.returncode == 1, done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"healer: no healer database at {tmp_path / 'var' / 'healer.sqlite3'}")
    assert "HEALER_DATA_DIR" in line and "DATABASE_URL" in line
    assert not (tmp_path / "var").exists()


def test_a_database_without_healer_schema_is_named_not_migrated(tmp_path: Path, empty_pg_url: str) -> None:
    done = healer(clean_env(tmp_path, DATABASE_URL=empty_pg_url), "orders", "list")

    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "has no healer schema" in line and "healer db upgrade" in line
    assert healer(clean_env(tmp_path, DATABASE_URL=empty_pg_url), "db", "upgrade", "--json").returncode == 0
    assert healer(clean_env(tmp_path, DATABASE_URL=empty_pg_url), "orders", "list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize("command", [["orders", "list"], ["db", "upgrade"], ["orders", "show", "abcd"]])
def test_an_unreachable_database_is_one_line_and_debug_shows_the_traceback(tmp_path: Path, command: list[str]) -> None:
    url = f"postgresql://healer:pw-never-shown@127.0.0.1:{free_port()}/shop"
    env = clean_env(tmp_path, DATABASE_URL=url)

    plain, debug = healer(env, *command), healer(env, "--debug", *command)

    assert plain.returncode == debug.returncode == 1
    [line] = plain.stderr.splitlines()
    assert line.startswith("healer: the database at postgresql://healer:") and "does not answer" in line
    assert "start it" in line and "DATABASE_URL" in line
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr
    assert "pw-never-shown" not in plain.stderr + debug.stderr


# -- ids ------------------------------------------------------------------------------------------


def test_list_shows_whole_ids_on_a_narrow_terminal_and_show_takes_a_prefix(shop: Shop, shop_env: dict[str, str]) -> None:
    order_id = shop.paid_order(status="needs_attention", last_error_step="email", last_error_class="email_auth",
                               queued=False)

    listed = healer(shop_env, "orders", "list", columns=60)
    shown = healer(shop_env, "orders", "show", str(order_id)[:10], "--json")
    retried = healer(shop_env, "orders", "retry", str(order_id)[:8], "--json")

    assert str(order_id) in listed.stdout, listed.stdout
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == str(order_id)
    assert retried.returncode == 0
    assert json.loads(retried.stdout) == {"requeued": [{"order_id": str(order_id), "status": "pdf_rendered"}],
                                          "nothing_to_retry": []}


def test_an_ambiguous_or_unknown_prefix_is_one_line(shop: Shop, shop_env: dict[str, str]) -> None:
    # Two orders whose ids share their first twenty hex digits.
    first = shop.paid_order(order_id=uuid.UUID("abcdef01-0000-4000-8000-100000000001"))
    shop.paid_order(order_id=uuid.UUID("abcdef01-0000-4000-8000-200000000002"))

    ambiguous = healer(shop_env, "orders", "show", "abcdef01-0000-4000-8000")
    unique = healer(shop_env, "orders", "show", "abcdef01-0000-4000-8000-1", "--json")
    unknown = healer(shop_env, "orders", "show", "0123abcd")
    too_short = healer(shop_env, "orders", "show", "abc")

    assert ambiguous.returncode == 1 and "starts more than one order id" in ambiguous.stderr
    assert unique.returncode == 0 and json.loads(unique.stdout)["id"] == str(first)
    assert unknown.returncode == 1 and "no order id starts with '0123abcd'" in unknown.stderr
    assert too_short.returncode == 64 and "at least 4 hex digits" in too_short.stderr


# -- the rest -------------------------------------------------------------------------------------


def test_render_to_a_missing_directory_is_one_line_before_rendering(tmp_path: Path) -> None:
    done = healer(clean_env(tmp_path), "render", "--template", "square-30x30", "--photo", "/etc/hostname",
                  "--title", "x", "-o", str(tmp_path / "missing" / "x.pdf"))

    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"healer: cannot write {tmp_path}/missing/x.pdf: "
                                        f"the directory {tmp_path}/missing does not exist"]


def test_version_names_the_commit_of_a_checkout(tmp_path: Path) -> None:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()

    done = healer(clean_env(tmp_path), "--version")

    assert done.returncode == 0 and done.stdout.strip().endswith(f"(commit {head})")
    built = healer(clean_env(tmp_path, HEALER_BUILD_COMMIT="0123456789abcdef"), "--version")
    assert built.stdout.strip().endswith("(commit 0123456789ab)")


def test_bash_completion_completes_commands_and_loads_in_bash(tmp_path: Path) -> None:
    script = healer(clean_env(tmp_path), "completion", "bash")
    assert script.returncode == 0
    (tmp_path / "healer.bash").write_text(script.stdout)

    words = subprocess.run(
        ["bash", "-c", f"source {tmp_path / 'healer.bash'}; COMP_WORDS=(healer or); COMP_CWORD=1; "
                       "_shtab_healer; printf '%s\\n' \"${COMPREPLY[@]}\""],
        capture_output=True, text=True, timeout=30)

    assert words.returncode == 0, words.stderr
    assert set(words.stdout.split()) == {"orders", "orphans"}


def test_a_bad_argument_exits_64_not_2(tmp_path: Path) -> None:
    done = healer(clean_env(tmp_path), "orders", "list", "--limit", "0")

    assert done.returncode == 64 and "must be at least 1" in done.stderr
