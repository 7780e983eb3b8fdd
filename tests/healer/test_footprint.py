"""The daemon's own process stays small: ReportLab, Pillow, numpy and soundfile (25 MiB
resident once they have rendered) are imported only by its render processes, even once every check has run, the assets
check's canary included, and a render has gone through the pool.

The daemon is built in a fresh interpreter, as `healer run` builds it (on embedded defaults, so no
peer is needed), because this test process has imported the renderer long since.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from healer import db
from tests.e2e.daemon import REPO

pytestmark = pytest.mark.timeout(180)

# Top-level packages only render processes may import.
RENDERER_PACKAGES = ("PIL", "numpy", "reportlab", "soundfile")

DAEMON_THEN_MODULES = f"""
import json, sys
from healer.config import Settings
from checks.assets import canary_inputs
from healer.daemon import Daemon

daemon = Daemon(Settings.from_env({{"HEALER_DATA_DIR": sys.argv[1]}}), demo=True)
try:
    daemon.prepare_database()
    results = daemon.health.run_all()
    audio = canary_inputs("a4-portrait").audio or b""
    png = daemon.render_pool.waveform_png(audio, "canary.wav")
    heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({RENDERER_PACKAGES!r}))
    print(json.dumps({{"assets": results["assets"].status.value, "assets_detail": results["assets"].detail,
                      "png": png.startswith(b"\\x89PNG"), "heavy": heavy}}))
finally:
    daemon.close()
"""


def test_the_daemon_process_never_imports_the_renderer(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", DAEMON_THEN_MODULES, str(tmp_path / "var")], cwd=REPO,
                          capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    # The work that needs the renderer was done, in render processes...
    assert seen["assets"] == "ok", seen["assets_detail"]
    assert "canary rendered" in seen["assets_detail"]
    assert seen["png"]
    # ...and the daemon's own process holds none of it.
    assert seen["heavy"] == [], f"the daemon's process imported {seen['heavy']}: keep them in render processes"


SCHEMA_CHECK_THEN_MODULES = """
import json, sys
from healer import db
import healer.daemon, healer.wiring

engine = db.make_engine(sys.argv[1])
print(json.dumps({"current": db.current_revision(engine), "head": db.head_revision(),
                  "alembic": sorted({name.split(".")[0] for name in sys.modules} & {"alembic", "mako"})}))
"""


def test_checking_a_migrated_schema_does_not_import_alembic(tmp_path: Path) -> None:
    """Alembic (with mako, about 10 MiB) is the migrator's: `healer run` on a migrated database
    compares the schema's revision with the code's without it."""
    url = f"sqlite:///{tmp_path / 'healer.sqlite3'}"
    db.upgrade(db.make_engine(url))

    done = subprocess.run([sys.executable, "-c", SCHEMA_CHECK_THEN_MODULES, url], cwd=REPO,
                          capture_output=True, text=True, timeout=150, check=False)

    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["current"] == seen["head"] == db.head_revision()
    assert seen["alembic"] == []


def test_the_head_revision_read_from_the_files_is_alembics() -> None:
    assert db.head_revision() == ScriptDirectory(str(db.MIGRATIONS_DIR)).get_current_head()
