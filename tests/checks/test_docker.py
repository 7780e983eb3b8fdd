"""The docker check against a real engine (Debian's dockerd, started by the fixtures on a private
socket): unhealthy, OOM-killed, crashed and restart-looping containers of a compose project fail
the check by name, and it is green again once they are healthy or gone."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import cast

from checks.base import CheckResult, Runbook, Status, run_check
from checks.docker import DockerCheck, compose_project_label
from tests.eventually import Unmet, eventually
from tests.fakes.docker_fixtures import Containers, DockerEngine


def _check(engine: DockerEngine, containers: Containers, **options: object) -> DockerCheck:
    return DockerCheck(base_url=engine.base_url, label=containers.label, **options)  # type: ignore[arg-type]


def _wait_for(check: DockerCheck, status: Status, timeout: float = 20.0) -> CheckResult:
    def reached() -> CheckResult | Unmet:
        result = run_check(check)
        return result if result.status is status else Unmet(result)

    return cast(CheckResult, eventually(reached, timeout=timeout, interval=0.1, what=f"the check to be {status.value}"))


def test_healthy_containers_of_the_project_are_ok(docker_engine: DockerEngine, docker_containers: Containers) -> None:
    web = docker_containers.run("web")
    docker_containers.run("worker", healthcheck=False)
    docker_containers.wait_for_health(web, "healthy")

    result = run_check(_check(docker_engine, docker_containers))

    assert result.status is Status.OK, result.detail
    project = docker_containers.project
    assert result.detail == f"2 containers ok: {project}-web-1 healthy, {project}-worker-1 running"
    assert result.data["containers"] == 2 and result.data["running"] == 2 and result.data["unhealthy"] == 0


def test_an_unhealthy_container_fails_by_name_and_recovers_when_healthy(
    docker_engine: DockerEngine, docker_containers: Containers
) -> None:
    web = docker_containers.run("web")
    docker_containers.run("db")
    check = _check(docker_engine, docker_containers)
    _wait_for(check, Status.OK)

    docker_containers.make_unhealthy(web)
    docker_containers.wait_for_health(web, "unhealthy")
    result = run_check(check)

    assert result.status is Status.FAILING
    assert result.runbook is Runbook.RESOURCES
    assert result.detail.startswith(f"{web.name} unhealthy (")
    assert "last exit 1" in result.detail and result.detail.endswith("(1 other containers ok or less severe)")
    assert web.name in result.remedy and "docker logs" in result.remedy
    assert result.data["unhealthy"] == 1

    docker_containers.make_healthy(web)
    assert _wait_for(check, Status.OK).data["unhealthy"] == 0


def test_an_oom_killed_container_fails_naming_the_kill(
    docker_engine: DockerEngine, docker_containers: Containers
) -> None:
    # `tail` keeps the whole "line" of endless zero bytes in memory, until the 16 MiB limit is hit.
    hog = docker_containers.run("renderer", command=["tail", "/dev/zero"], healthcheck=False,
                                mem_limit="16m", memswap_limit="16m")
    docker_containers.wait_for(hog, lambda a: a["State"]["Status"] == "exited", what="exited")
    check = _check(docker_engine, docker_containers)

    result = run_check(check)

    assert result.status is Status.FAILING
    assert result.detail == f"{hog.name} OOM-killed (exit 137, 0 restarts)"
    assert result.data["oom_killed"] == 1

    hog.remove(force=True)  # the fix: replaced by a container that fits its limit
    docker_containers.run("renderer-2", healthcheck=False, mem_limit="16m")
    assert run_check(check).status is Status.OK


def test_a_container_that_exited_with_an_error_fails_with_its_exit_code(
    docker_engine: DockerEngine, docker_containers: Containers
) -> None:
    crashed = docker_containers.run("mailer", command=["sh", "-c", "exit 3"], healthcheck=False)
    done = docker_containers.run("migrate", command=["true"], healthcheck=False)  # a one-shot job
    for container in (crashed, done):
        docker_containers.wait_for(container, lambda a: a["State"]["Status"] == "exited", what="exited")

    result = run_check(_check(docker_engine, docker_containers))

    assert result.status is Status.FAILING
    assert result.detail == f"{crashed.name} exited with code 3 (1 other containers ok or less severe)"

    crashed.remove()
    assert run_check(_check(docker_engine, docker_containers)).status is Status.OK


def test_a_restart_loop_fails(docker_engine: DockerEngine, docker_containers: Containers) -> None:
    looping = docker_containers.run("web", command=["sh", "-c", "sleep 0.3; exit 1"], healthcheck=False,
                                    restart_policy={"Name": "on-failure"})
    docker_containers.wait_for(looping, lambda a: a["RestartCount"] >= 3, what="3 restarts")

    result = run_check(_check(docker_engine, docker_containers))

    assert result.status is Status.FAILING
    assert looping.name in result.detail
    assert "restarting in a loop" in result.detail or "restarted" in result.detail
    assert result.data["restarts"] >= 3


def test_any_label_selects_the_containers_to_watch(docker_engine: DockerEngine, docker_containers: Containers) -> None:
    marked = docker_containers.run("web", labels={"healer.autoheal": "true"}, healthy=False)
    docker_containers.run("db", healthy=False)  # unhealthy too, but not carrying the label
    docker_containers.wait_for_health(marked, "unhealthy")

    result = run_check(DockerCheck(base_url=docker_engine.base_url, label="healer.autoheal=true"))

    assert result.status is Status.FAILING
    assert result.detail.startswith(f"{marked.name} unhealthy")
    assert result.data["containers"] == 1


def test_no_container_with_the_label_warns(docker_engine: DockerEngine, busybox_image: str) -> None:
    label = compose_project_label("no-such-project")

    result = run_check(DockerCheck(base_url=docker_engine.base_url, label=label))

    assert result.status is Status.WARNING
    assert result.detail == f"no containers with label {label}"
    assert "docker compose up" in result.remedy


def test_without_an_engine_configured_the_check_is_disabled() -> None:
    result = run_check(DockerCheck(base_url=None))

    assert result.status is Status.DISABLED
    assert result.detail == "no Docker engine configured (DOCKER_HOST unset)"


def test_a_configured_socket_with_no_engine_behind_it_fails_saying_so(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # the file a crashed engine leaves behind: nobody listens
    stale.close()

    result = run_check(DockerCheck(base_url=f"unix://{path}", timeout_seconds=3))

    assert result.status is Status.FAILING
    assert result.detail == (f"Docker engine at unix://{path} unreachable: "
                             "connection refused (nothing listening: the engine is stopped)")
    assert "DOCKER_HOST" in result.remedy


def test_a_configured_socket_path_that_does_not_exist_fails_saying_so(tmp_path: Path) -> None:
    result = run_check(DockerCheck(base_url=f"unix://{tmp_path}/missing.sock", timeout_seconds=3))

    assert result.status is Status.FAILING
    assert "unreachable: no socket at that path" in result.detail
