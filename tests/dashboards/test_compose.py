"""The compose stack and the image: `docker compose config` accepts the stack, every service it
runs is health-checked, the configuration it mounts exists and is valid for its tool, and the
Dockerfile builds the daemon the way docs/operations.md describes.

No engine is needed: `config` only reads and normalises the file, and the Dockerfile is read, not
built (building needs the base image from a registry this machine cannot reach). The stack needs
its secrets set (`${VAR:?}`): `config` runs with a stand-in for each. What keeps the stack safe
(the socket proxy, the unpublished operator port, no default secrets, pinned images, hashed locks)
is tested in tests/security/test_deployment.py.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from typing import Any

import pytest
import yaml

from tests.dashboards import (
    ALERTMANAGER_CONFIG,
    PROMETHEUS_CONFIG,
    REPO,
    compose_config,
    require_tool,
    run_tool,
    services,
)
from tests.deploy import dockerfile_global_args

ONE_SHOT = {"minio-init"}  # runs once and exits: nothing to health-check
AUTOHEAL = {"minio", "prometheus", "alertmanager", "grafana"}  # safe for healer to restart
SOCKET_PROXY = "docker-socket-proxy"


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def instructions(name: str) -> list[str]:
    """The arguments of every `NAME` instruction of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile())
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.MULTILINE)]


def test_compose_accepts_the_stack() -> None:
    assert compose_config()["services"]


def test_the_stack_has_the_shops_production_shape() -> None:
    found = services()

    assert {"postgres", "minio", "minio-init", "healer", SOCKET_PROXY, "prometheus", "alertmanager",
            "grafana"} <= set(found)
    assert found["postgres"]["image"].startswith("postgres:")
    assert found["healer"]["build"]["context"] == str(REPO)
    assert found["healer"]["build"]["dockerfile"] == "Dockerfile"


def test_every_long_running_service_is_health_checked() -> None:
    unchecked = [name for name, service in services().items()
                 if name not in ONE_SHOT and not service.get("healthcheck", {}).get("test")]

    assert unchecked == []
    assert services()["minio-init"]["restart"] == "no"


def test_only_services_safe_to_restart_carry_the_autoheal_label() -> None:
    labelled = {name for name, service in services().items()
                if service.get("labels", {}).get("healer.autoheal") == "true"}

    assert labelled == AUTOHEAL


def test_the_daemon_listens_on_all_interfaces_and_waits_for_its_peers() -> None:
    healer = services()["healer"]
    env = healer["environment"]

    assert env["HEALER_HTTP_HOST"] == "0.0.0.0"
    assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env["DATABASE_URL"]
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["HEALER_AUTOHEAL_LABEL"] == "healer.autoheal=true"
    assert healer["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert healer["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "/livez" in " ".join(healer["healthcheck"]["test"])
    assert "HEALER_OPS_PORT" in " ".join(healer["healthcheck"]["test"])  # the operator listener


def test_the_monitoring_services_mount_this_repositorys_configuration() -> None:
    mounts = {name: [_mount(v) for v in s.get("volumes", [])] for name, s in services().items()}
    binds = [m.split(":")[0] for ms in mounts.values() for m in ms if m.startswith("/")]

    assert f"{REPO}/dashboards/prometheus:/etc/prometheus:ro" in mounts["prometheus"]
    assert f"{REPO}/dashboards/alertmanager:/etc/alertmanager:ro" in mounts["alertmanager"]
    assert f"{REPO}/dashboards/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts["grafana"]
    missing = [b for b in binds if b.startswith(str(REPO)) and not (REPO / b[len(str(REPO)) + 1:]).exists()]
    assert missing == []


def _mount(volume: str | dict[str, Any]) -> str:
    """`source:target[:ro]`, from compose v1's short form or v2's long form."""
    if isinstance(volume, str):
        return volume
    return f"{volume['source']}:{volume['target']}" + (":ro" if volume.get("read_only") else "")


def test_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = run_tool([require_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)])

    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert config["scrape_configs"][0]["job_name"] == "healer"
    # The operator listener, over the compose network: the public one (8080) serves no /metrics.
    assert config["scrape_configs"][0]["static_configs"] == [{"targets": ["healer:8081"]}]
    assert services()["healer"]["environment"]["HEALER_OPS_PORT"] == "8081"


def test_alertmanager_config_is_valid() -> None:
    result = run_tool([require_tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)])

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_python_3_11_slim_running_as_a_non_root_user() -> None:
    base = dockerfile_global_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base  # a pinned patch release
    assert [f.split()[0] for f in instructions("FROM")] == ["${PYTHON_IMAGE}"] * 2  # build and runtime stages
    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_the_image_installs_the_locked_versions_and_copies_the_assets_to_app() -> None:
    runs = " ".join(instructions("RUN"))
    copies = instructions("COPY")

    assert "pip install --require-hashes --no-deps -r requirements-runtime.lock" in runs
    assert "--no-build-isolation --no-index ." in runs  # healer itself: nothing from an index
    assert any("requirements-runtime.lock" in c for c in copies)
    assert "poster_assets ./poster_assets" in copies  # into the wheel: healer finds its assets anywhere
    assert "/app" in instructions("WORKDIR")
    for assets in ("fonts", "templates", "backgrounds"):  # and where an operator looks: /app
        assert any(c.startswith(f"poster_assets/{assets}") and c.rstrip("/").endswith(f"./{assets}")
                   for c in copies), assets


def test_the_image_migrates_then_runs_the_daemon_with_a_livez_healthcheck() -> None:
    env = " ".join(instructions("ENV"))

    assert "HEALER_HTTP_HOST=0.0.0.0" in env
    assert "HEALER_OPS_HOST=0.0.0.0" in env and "HEALER_OPS_PORT=8081" in env
    assert "HEALER_ASSETS_DIR=/app" in env
    assert "/livez" in instructions("HEALTHCHECK")[0]
    assert "HEALER_OPS_PORT" in instructions("HEALTHCHECK")[0]
    assert re.search(r"healer db upgrade && exec healer run", instructions("CMD")[0])


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-runtime.lock"])
def test_every_runtime_dependency_is_pinned_in_the_lock(lock: str) -> None:
    """.venv installs requirements.lock, the image requirements-runtime.lock: each pins every
    dependency pyproject.toml names (hash-checking mode installs nothing unpinned)."""
    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = {normal(line.split("==")[0]) for line in (REPO / lock).read_text().splitlines()
              if "==" in line and not line.startswith((" ", "#"))}
    names = {normal(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in dependencies}

    assert names - pinned == set()


def test_everything_the_dockerfile_copies_is_in_the_build_context() -> None:
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    # `COPY --from=build` copies from the build stage, not from the context.
    sources = [src for copy in instructions("COPY") if not copy.startswith("--from=")
               for src in copy.split()[:-1] if not src.startswith("--")]

    for source in sources:
        assert (REPO / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is in .dockerignore"
    for package in ("healer", "checks", "fulfilment", "poster_assets", "poster_assets/fonts", "poster_assets/templates",
                    "poster_assets/backgrounds"):
        assert package in sources


@pytest.mark.parametrize("name", sorted(AUTOHEAL | {"healer", "postgres", SOCKET_PROXY}))
def test_healthchecks_use_a_command_the_image_has(name: str) -> None:
    """Slim images have no curl: healer probes with Python, the Prometheus family and the socket
    proxy (Alpine) with busybox wget."""
    test = services()[name]["healthcheck"]["test"]
    command = test[1] if test[0] in ("CMD", "CMD-SHELL") else test[0]

    expected = {"healer": "python", "postgres": "pg_isready", "minio": "mc"}.get(name, "wget")
    assert command.split()[0] == expected
