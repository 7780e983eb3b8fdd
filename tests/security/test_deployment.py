"""The compose stack and the image are safe by default:

- no container that publishes a port beyond the host's loopback holds the Docker socket: one
  proxy holds it, publishes nothing, shares an internal network with healer alone, and passes
  list, inspect and restart only. The proxy's rules are run for real: Debian's HAProxy with the
  configuration docker-compose.yml gives it, in front of a real dockerd, healer's docker check
  and container restarter going through it, and the calls that would own the host refused;
- healer publishes its public port only: the operator port (metrics, health, admin API) is
  scraped over the compose network and its health check probes it;
- no password, key or token has a default: `compose config` stops, naming the variable, when one
  is unset, and .env.example lists every one of them empty;
- every image is an exact version; the Python dependencies are installed with hash checking;
- the image is built in two stages from one pinned base: the runtime stage gets the installed
  environment only (no sources, no build tools), runs as uid 10001 and probes the operator port;
- Docker's grace period on stop outlasts a render, so SIGTERM never kills one halfway.

Each of these was false before the "Safe by default" issue.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from docker.errors import APIError
from sqlalchemy.orm import Session, sessionmaker

from checks.base import Status, run_check
from checks.docker import DockerCheck
from healer.config import DEFAULT_RENDER_TIMEOUT_SECONDS, RemediationMode
from healer.health.metrics import Metrics
from healer.health.monitor import HealthMonitor
from healer.remediation.audit import Action, Audit, Remediation, Result
from healer.remediation.containers import ContainerHealer
from healer.remediation.policy import RemediationPolicy
from healer.remediation.remediator import Remediator
from tests.dashboards import (
    COMPOSE_FILE,
    DOCKERFILE,
    PROMETHEUS_CONFIG,
    REPO,
    compose_config,
    compose_env,
    require_tool,
    required_compose_variables,
    run_compose_config,
    services,
)
from tests.deploy import dockerfile_global_args, dockerfile_stages
from tests.eventually import eventually
from tests.fakes.docker_fixtures import Containers, DockerEngine
from tests.fakes.ports import free_port

PROXY = "docker-socket-proxy"
PROXY_IMAGE = "tecnativa/docker-socket-proxy"
PROXY_URL = f"tcp://{PROXY}:2375"
OPS_PORT = 8081
PUBLIC_PORT = 8080
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
SOCKET = "/var/run/docker.sock"
SECRETS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "SENDGRID_API_KEY", "STRIPE_SECRET_KEY",
           "STRIPE_WEBHOOK_SECRET", "HEALER_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD")
# A name that says it carries a secret; a *public* key (SendGrid's webhook verification key) does not.
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|(?<!PUBLIC)_KEY|KEY_ID|API_KEY", re.IGNORECASE)

# The proxy's sections of the Engine API (tecnativa/docker-socket-proxy's variables) healer needs
# none of; EVENTS, PING and VERSION are on unless set to 0.
UNNEEDED_SECTIONS = ("ALLOW_START", "ALLOW_STOP", "AUTH", "BUILD", "COMMIT", "CONFIGS", "DISTRIBUTION", "EVENTS",
                     "EXEC", "GRPC", "IMAGES", "INFO", "NETWORKS", "NODES", "PLUGINS", "SECRETS", "SERVICES",
                     "SESSION", "SWARM", "SYSTEM", "TASKS", "VOLUMES")


@cache
def raw() -> dict[str, Any]:
    """docker-compose.yml as written (interpolations unexpanded)."""
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def published(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, container port) of every published port; "" for every interface."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # compose v2's long form
            if port.get("published") in (None, ""):
                continue
            found.append((str(port.get("host_ip", "")), int(port["target"])))
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        if len(parts) == 1:
            continue  # "8080": a random host port on every interface
        host = parts[0] if len(parts) == 3 else ""
        found.append((host.strip("[]"), int(parts[-1])))
    return found


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of every volume, short or long form."""
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append((str(volume.get("source", "")), str(volume["target"]), bool(volume.get("read_only"))))
        else:
            parts = str(volume).split(":")
            found.append((parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2:] == ["ro"]))
    return found


def networks_of(service: dict[str, Any]) -> set[str]:
    networks = service.get("networks")
    if networks is None:
        return {"default"}
    return set(networks)


# -- the Docker socket ------------------------------------------------------------------------------


def test_no_service_that_publishes_a_port_beyond_loopback_holds_the_docker_socket() -> None:
    holders = {name for name, s in services().items() if any(SOCKET in m[0] for m in mounts(s))}
    public = {name for name, s in services().items() if any(host not in LOOPBACK for host, _ in published(s))}

    assert holders == {PROXY}  # healer included: it reaches the engine through the proxy only
    assert public & holders == set()
    assert public == {"healer"}  # and healer publishes its public listener only (below)
    assert "group_add" not in services()["healer"]  # the socket's group was only for the socket


def test_the_socket_proxy_passes_containers_and_restarts_only() -> None:
    proxy = services()[PROXY]
    env = {k: str(v) for k, v in proxy["environment"].items()}

    assert proxy["image"].startswith(f"{PROXY_IMAGE}:")
    assert (env["CONTAINERS"], env["ALLOW_RESTARTS"], env["POST"]) == ("1", "1", "0")
    assert [s for s in UNNEEDED_SECTIONS if env.get(s, "1" if s == "EVENTS" else "0") != "0"] == []
    assert mounts(proxy) == [(SOCKET, SOCKET, True)]
    assert published(proxy) == [] and not proxy.get("ports")


def test_the_socket_proxy_sits_on_an_internal_network_with_healer_alone() -> None:
    proxy = services()[PROXY]
    declared = compose_config().get("networks") or {}

    assert networks_of(proxy) and all(declared.get(n, {}).get("internal") is True for n in networks_of(proxy))
    for network in networks_of(proxy):
        members = {name for name, s in services().items() if network in networks_of(s)}
        assert members == {PROXY, "healer"}, network


def test_healer_reaches_the_engine_through_the_proxy() -> None:
    healer = services()["healer"]

    assert healer["environment"]["DOCKER_HOST"] == PROXY_URL
    assert networks_of(healer) >= networks_of(services()[PROXY])
    assert not [m for m in mounts(healer) if "docker.sock" in m[0] + m[1]]


# -- the proxy's rules, for real --------------------------------------------------------------------


@pytest.fixture
def socket_proxy(docker_engine: DockerEngine, tmp_path: Path) -> Iterator[str]:
    """Debian's HAProxy running the proxy's configuration from docker-compose.yml, with the
    proxy's environment, in front of the test engine's socket. Only the listening address is
    changed (a free loopback port instead of :2375 in the container)."""
    haproxy = require_tool("haproxy")
    proxy = services()[PROXY]
    env = {k: str(v) for k, v in proxy["environment"].items()}
    text = env.pop("HAPROXY_CONFIG").replace("$$", "$")  # `config` keeps compose's escaping
    port = free_port()
    text, binds = re.subn(r"(?m)^(\s*)bind :2375\s*$", rf"\g<1>bind 127.0.0.1:{port}", text)
    assert binds == 1, "the proxy's configuration binds :2375 once"
    (tmp_path / "haproxy.cfg").write_text(text)
    # The image's command writes HAPROXY_CONFIG to a file and runs HAProxy on it.
    assert "$HAPROXY_CONFIG" in " ".join(proxy["command"]).replace("$$", "$")
    env["SOCKET_PATH"] = docker_engine.base_url.removeprefix("unix://")
    log_path = tmp_path / "haproxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        def listening() -> bool:
            assert process.poll() is None, f"haproxy exited:\n{log_path.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return True

        eventually(listening, what="haproxy to listen")
        yield f"tcp://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_through_the_proxy_the_docker_check_sees_the_containers(
    socket_proxy: str, docker_containers: Containers
) -> None:
    web = docker_containers.run("web")
    docker_containers.wait_for_health(web, "healthy")
    sick = docker_containers.run("worker", healthy=False)
    docker_containers.wait_for_health(sick, "unhealthy")

    result = run_check(DockerCheck(base_url=socket_proxy, label=docker_containers.label))

    assert result.status is Status.FAILING
    assert f"{sick.name} unhealthy" in result.detail and "unreachable" not in result.detail
    assert result.data["containers"] == 2


def test_through_the_proxy_healer_restarts_an_unhealthy_container(
    socket_proxy: str, docker_engine: DockerEngine, docker_containers: Containers,
    sessions: sessionmaker[Session],
) -> None:
    audit = Audit(sessions, Metrics(), RemediationMode.ON, worker="test")
    healer = ContainerHealer(socket_proxy, ("healer.autoheal=true", docker_containers.label),
                             RemediationPolicy(docker=True, unhealthy_seconds=0.2, stop_timeout_seconds=1), audit)
    monitor = HealthMonitor([DockerCheck(base_url=socket_proxy, label=docker_containers.label)])
    monitor.add_listener(Remediator(audit, containers=healer).on_check_result)
    web = docker_containers.run("web", labels={"healer.autoheal": "true"})
    docker_containers.wait_for_health(web, "healthy")
    started = docker_containers.state(web)["StartedAt"]
    docker_containers.make_unhealthy(web)
    docker_containers.wait_for_health(web, "unhealthy")

    eventually(lambda: docker_containers.state(web)["StartedAt"] != started, timeout=30, interval=0.2,
               step=lambda: monitor.run("docker"), what="healer to restart the container through the proxy")

    with sessions() as session:
        rows = session.query(Remediation).filter_by(action=Action.RESTART_CONTAINER.value).all()
    assert [(r.target, r.result) for r in rows] == [(web.name, Result.SUCCESS.value)]
    docker_containers.wait_for_health(web, "healthy")


def test_the_proxy_refuses_whatever_would_own_the_host(
    socket_proxy: str, docker_engine: DockerEngine, docker_containers: Containers, busybox_image: str
) -> None:
    web = docker_containers.run("web")
    client = docker.DockerClient(base_url=socket_proxy, version="auto", timeout=10)
    engine = docker_engine.client
    before = {c.id for c in engine.containers.list(all=True)}
    refused = {
        "create a container (a bind mount of / is root on the host)": lambda: client.api.create_container(
            busybox_image, ["true"], host_config=client.api.create_host_config(binds=["/:/host"], privileged=True)),
        "exec in a container": lambda: client.api.exec_create(web.id, ["id"]),
        "stop a container": lambda: client.api.stop(web.id, timeout=1),
        "kill a container": lambda: client.api.kill(web.id),
        "start a container": lambda: client.api.start(web.id),
        "remove a container": lambda: client.api.remove_container(web.id, force=True),
        "update a container": lambda: client.api.update_container(web.id, mem_limit="64m"),
        "read a container's files": lambda: client.api.get_archive(web.id, "/etc"),
        "export a container": lambda: next(iter(client.api.export(web.id))),
        "read a container's logs": lambda: client.api.logs(web.id),
        "list images": lambda: client.api.images(),
        "pull an image": lambda: client.api.pull("busybox", tag="latest"),
        "list networks": lambda: client.api.networks(),
        "list volumes": lambda: client.api.volumes(),
        "read the engine's info": lambda: client.api.info(),
        "stream events": lambda: client.api._raise_for_status(client.api._get(client.api._url("/events"),
                                                                               params={"until": int(time.time())})),
        "prune containers": lambda: client.api.prune_containers(),
    }
    let_through = []
    for what, call in refused.items():
        try:
            call()
        except APIError as error:
            if error.status_code != 403:
                let_through.append(f"{what}: {error.status_code} {error.explanation}")
        else:
            let_through.append(f"{what}: allowed")
    client.close()

    assert let_through == []
    assert {c.id for c in engine.containers.list(all=True)} == before
    assert docker_containers.state(web)["Running"]


# -- the operator port ------------------------------------------------------------------------------


def test_healer_publishes_its_public_port_and_not_the_operator_port() -> None:
    healer = services()["healer"]
    env = healer["environment"]

    assert (env["HEALER_HTTP_HOST"], env["HEALER_HTTP_PORT"]) == ("0.0.0.0", str(PUBLIC_PORT))
    assert (env["HEALER_OPS_HOST"], env["HEALER_OPS_PORT"]) == ("0.0.0.0", str(OPS_PORT))  # on its networks
    assert [port for _, port in published(healer)] == [PUBLIC_PORT]
    assert str(OPS_PORT) not in " ".join(str(p) for p in healer.get("ports", []))


def test_prometheus_scrapes_the_operator_port_over_the_compose_network() -> None:
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["scrape_configs"]
    healer_job = next(job for job in scrape if job["job_name"] == "healer")

    assert [t for c in healer_job["static_configs"] for t in c["targets"]] == [f"healer:{OPS_PORT}"]
    assert networks_of(services()["prometheus"]) & networks_of(services()["healer"])


def test_healers_health_checks_probe_livez_on_the_operator_port() -> None:
    compose_probe = " ".join(services()["healer"]["healthcheck"]["test"])
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    [image_probe] = re.findall(r"^HEALTHCHECK\s+(.*)$", text, re.MULTILINE)

    for probe in (compose_probe, image_probe):
        assert "/livez" in probe
        assert "HEALER_OPS_PORT" in probe and f"'{OPS_PORT}'" in probe
        assert "HEALER_HTTP_PORT" not in probe and str(PUBLIC_PORT) not in probe


def test_the_image_exposes_the_public_port_only_and_listens_for_operators_on_its_network() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    exposed = [p for line in re.findall(r"^EXPOSE\s+(.*)$", text, re.MULTILINE) for p in line.split()]
    env = " ".join(re.findall(r"^ENV\s+(.*)$", text, re.MULTILINE))

    assert exposed == [str(PUBLIC_PORT)]
    assert "HEALER_OPS_HOST=0.0.0.0" in env and f"HEALER_OPS_PORT={OPS_PORT}" in env


# -- secrets ------------------------------------------------------------------------------------------


def interpolations(text: str) -> list[tuple[str, str]]:
    """(name, operator and rest) of every `${NAME...}` in a compose file (`$$` is a literal $)."""
    return re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}", text.replace("$$", ""))


def test_no_password_key_or_token_has_a_default() -> None:
    secrets = [(name, rest) for name, rest in interpolations(COMPOSE_FILE.read_text()) if SECRET_NAME.search(name)]

    assert {name for name, _ in secrets} >= set(SECRETS)
    assert [f"${{{name}{rest}}}" for name, rest in secrets if not rest.startswith(":?")] == []


def test_no_secret_is_written_into_the_file() -> None:
    """Every setting that carries a secret takes it from a required variable, never a literal."""
    carriers = {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "SENDGRID_API_KEY", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET",
                "HEALER_ADMIN_TOKEN", "GF_SECURITY_ADMIN_PASSWORD", "DATABASE_URL"}
    anchors = {k: v for k, v in raw().items() if k.startswith("x-") and isinstance(v, dict)}
    environments = [dict(s.get("environment") or {}) for name, s in raw()["services"].items()
                    if name != PROXY] + list(anchors.values())  # the proxy's SECRETS=0 is a switch
    literal = [f"{key}={value}" for env in environments for key, value in env.items()
               if (key in carriers or SECRET_NAME.search(key)) and isinstance(value, str)
               and not re.search(r"\$\{[A-Z0-9_]+:\?", value)]

    assert literal == []


@pytest.mark.parametrize("name", SECRETS + ("FROM_EMAIL", "PUBLIC_BASE_URL"))
def test_compose_refuses_to_run_without_each_secret(name: str) -> None:
    assert name in required_compose_variables()
    for missing in (None, ""):  # unset, or set to nothing (as in .env.example)
        result = run_compose_config(compose_env(**{name: missing}))

        assert result.returncode != 0
        assert name in result.stderr and f"set {name} in .env" in result.stderr, result.stderr


def test_every_required_variable_is_in_env_example_and_empty_there() -> None:
    example = (REPO / ".env.example").read_text()
    values = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))

    assert required_compose_variables() - set(values) == set()
    assert {name: values[name] for name in required_compose_variables() if values[name].strip()} == {}
    assert values["COMPOSE_PROJECT_NAME"] == "healer"
    # Copied without filling it in, the stack does not start.
    env = compose_env(**dict.fromkeys(required_compose_variables()))
    result = run_compose_config(env, env_file=REPO / ".env.example")
    assert result.returncode != 0 and "in .env" in result.stderr


def test_grafana_has_no_default_admin_password() -> None:
    grafana = raw()["services"]["grafana"]["environment"]

    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "admin / admin" not in COMPOSE_FILE.read_text()


# -- images -----------------------------------------------------------------------------------------

# "Exact": a full major.minor.patch version, a dated release (MinIO's RELEASE.2024-12-18T13-15-44Z),
# or, for PostgreSQL whose versions have two parts, major.minor with the base image's version
# (16.15-alpine3.24); or a digest. Never `latest`, never a bare major (`16-alpine`, `3.11-slim`).
EXACT_TAG = re.compile(
    r"""^(?:v?\d+\.\d+\.\d+(?:[-+.][0-9A-Za-z.-]+)?      # 1.2.3, v3.13.3, 0.4.1-alpine
        |RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z  # dated releases
        |\d+\.\d+-[a-z]+\d+\.\d+(?:\.\d+)?               # 16.15-alpine3.24
        )$""",
    re.VERBOSE,
)


def image_tag(image: str) -> str:
    if "@sha256:" in image:
        return "@sha256"
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else "latest"


def test_every_image_is_pinned_to_an_exact_version() -> None:
    assert [bool(EXACT_TAG.match(t)) for t in ("16-alpine", "latest", "3.11-slim", "v2", "12", "16.15-alpine3.24",
                                                 "v3.13.3", "12.4.12", "0.4.1", "RELEASE.2024-12-18T13-15-44Z")
            ] == [False] * 5 + [True] * 5
    loose = {name: s["image"] for name, s in services().items()
             if "build" not in s and image_tag(s["image"]) != "@sha256" and not EXACT_TAG.match(image_tag(s["image"]))}

    assert loose == {}
    assert {name for name, s in services().items() if "build" in s} == {"healer"}  # built here, from the lock


def test_the_monitoring_images_are_current() -> None:
    """Grafana 11.1 (2024) and Prometheus 2.x are out of support: a 2025-2026 release of each."""
    def version(service: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", image_tag(services()[service]["image"]))[:3])

    assert version("grafana") >= (12, 0, 0)
    assert version("prometheus") >= (3, 0, 0)
    assert version("alertmanager") >= (0, 28, 0)


# -- the image's stages ------------------------------------------------------------------------------

IMAGE_UID = 10001  # deploy/kubernetes runs the pods as this uid (runAsUser), with runAsNonRoot


def stage_base(stage: list[tuple[str, str]]) -> str:
    """The image a stage starts from, its `${ARG}` replaced by the global ARG's default."""
    image = stage[0][1].split()[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: dockerfile_global_args()[m.group(1) or m.group(2)], image)


def stage_text(stage: list[tuple[str, str]]) -> str:
    return "\n".join(f"{keyword} {arguments}" for keyword, arguments in stage)


def test_the_image_is_built_in_stages_and_the_runtime_gets_the_environment_only() -> None:
    stages = dockerfile_stages()
    build, runtime = stages[0], stages[-1]
    build_name = build[0][1].split()[-1]

    assert len(stages) >= 2 and re.search(r"\bAS\s+\w+$", build[0][1], re.IGNORECASE)
    assert "pip install --require-hashes --no-deps -r requirements-runtime.lock" in stage_text(build)
    assert "COPY docs ./docs" in stage_text(build)  # healer/docs links there: the wheel's /runbook
    copies_from = [args for keyword, args in runtime if keyword == "COPY" and args.startswith("--from=")]
    assert copies_from == [f"--from={build_name} /opt/healer /opt/healer"]
    # Nothing is installed or built in the runtime stage, and nothing of the build is left there.
    runtime_runs = " ".join(args for keyword, args in runtime if keyword == "RUN")
    assert not re.search(r"\bpip\b|apt-get|\bgcc\b|build-essential|setup\.py", runtime_runs)
    assert "/src" not in stage_text(runtime)
    assert [args for keyword, args in runtime if keyword == "COPY" and not args.startswith(("--from=", "poster_assets/"))
            ] == []
    assert re.search(r"^ENV .*PATH=/opt/healer/bin:", stage_text(runtime), re.MULTILINE)


def test_the_runtime_stage_runs_as_its_numeric_non_root_user() -> None:
    runtime = dockerfile_stages()[-1]
    [user] = [args for keyword, args in runtime if keyword == "USER"]
    uid, _, gid = user.partition(":")

    # A number: Kubernetes' runAsNonRoot cannot check a name. And the user exists in the image.
    assert uid == str(IMAGE_UID) and gid in ("", str(IMAGE_UID))
    assert re.search(rf"useradd [^&]*--uid {IMAGE_UID}\b", stage_text(runtime))
    assert [keyword for keyword, _ in runtime].index("USER") > max(
        i for i, (keyword, _) in enumerate(runtime) if keyword == "RUN")  # nothing after it runs as root


def test_both_stages_start_from_one_pinned_base() -> None:
    bases = {stage_base(stage) for stage in dockerfile_stages()}
    [base] = bases  # the environment's python links to the base's interpreter: one image for both

    assert base.startswith("python:3.11.")
    assert image_tag(base) == "@sha256" or EXACT_TAG.match(image_tag(base)), base
    assert re.fullmatch(r"3\.11\.\d+-slim-\w+", base.split("@")[0].split(":", 1)[1]), "a Debian release, by name"


def test_the_runtime_stage_has_the_healthcheck_and_the_build_commit() -> None:
    runtime = dockerfile_stages()[-1]
    keywords = [keyword for keyword, _ in runtime]

    assert keywords.count("HEALTHCHECK") == 1 and "HEALTHCHECK" not in [k for s in dockerfile_stages()[:-1] for k, _ in s]
    assert "ARG HEALER_BUILD_COMMIT" in stage_text(runtime)
    assert re.search(r"^ENV .*HEALER_BUILD_COMMIT=\$\{HEALER_BUILD_COMMIT\}", stage_text(runtime), re.MULTILINE)


# -- stopping -------------------------------------------------------------------------------------------


def seconds(duration: str | int | float) -> float:
    """A compose duration (`120s`, `2m`, `1m30s`, `1h`) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_docker_waits_for_a_render_to_finish_before_killing_healer() -> None:
    healer = raw()["services"]["healer"]
    assert [seconds(d) for d in ("120s", "2m", "1m30s", "1h", 45)] == [120, 120, 90, 3600, 45]

    assert "stop_grace_period" in healer, "Docker's default is 10 s: a render in flight would be SIGKILLed"
    assert seconds(healer["stop_grace_period"]) > DEFAULT_RENDER_TIMEOUT_SECONDS
    assert "HEALER_RENDER_TIMEOUT_SECONDS" not in (healer.get("environment") or {}), (
        "a render timeout set here must stay below stop_grace_period: tie them, or leave the default")


# -- Python dependencies ------------------------------------------------------------------------------


def requirements(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of every requirement in a pip requirements file."""
    logical = re.sub(r"\\\n", " ", lock.read_text())
    found = {}
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("==")
        assert rest, f"{lock.name}: not pinned with ==: {line}"
        version = rest.split()[0].split(";")[0]
        found[re.sub(r"[-_.]+", "-", name).lower()] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return found


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-runtime.lock"])
def test_every_locked_requirement_carries_its_hashes(lock: str) -> None:
    pinned = requirements(REPO / lock)

    assert pinned
    assert [name for name, (_, hashes) in pinned.items() if not hashes] == []


def test_the_runtime_lock_pins_the_versions_the_tests_run() -> None:
    full, runtime = requirements(REPO / "requirements.lock"), requirements(REPO / "requirements-runtime.lock")
    build = {re.split(r"[<>=!~ ]", r, maxsplit=1)[0].lower()
             for r in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]}

    assert {n: (v, full[n][0]) for n, (v, _) in runtime.items() if n in full and full[n][0] != v} == {}
    assert set(runtime) - set(full) <= build  # the build backend is the image's only extra
    assert {"pytest", "moto", "schemathesis", "hypothesis", "mypy"} & set(runtime) == set()


def test_installs_check_hashes() -> None:
    lib = (REPO / "scripts" / "lib.sh").read_text()
    dockerfile = re.sub(r"\\\n", " ", DOCKERFILE.read_text())

    assert "pip install --require-hashes -r requirements.lock" in lib
    assert "pip install --require-hashes --no-deps -r requirements-runtime.lock" in dockerfile
    assert "-c requirements.lock" not in dockerfile  # constraints cannot carry hashes
