"""A real Docker engine for tests; imported by tests/conftest.py.

- `docker_engine` (session): Debian's `dockerd` (package docker.io) on a private socket in a temp
  directory, with its own data root, exec root, pid file and (empty) config file, no bridge and no
  iptables rules, so it touches neither the machine's network nor another engine. vfs storage: the
  test image is a megabyte, and vfs works on any file system (overlay2 does not nest everywhere).
- `busybox_image` (session): `healer-test-busybox:latest`, made like `docker import` (the same
  Engine API call) from a root file system holding only Debian's /bin/busybox (busybox-static)
  and its applet links. No registry is involved.
- `docker_containers` (function): a `Containers` helper that runs labelled containers of a fresh
  compose project (`--network none`), with a health check a test can flip, and removes them all
  at teardown.

Containers run `sleep 3600` (or a given command). The health check is `test -f /tmp/healthy`,
probed every 200 ms, unhealthy after one failure: `make_unhealthy` deletes the file, `make_healthy`
creates it, both with `exec_run`.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import docker
import pytest
from docker.models.containers import Container

from checks.docker import COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL, compose_project_label
from tests.eventually import TimedOut, Unmet, eventually

__all__ = ["Containers", "DockerEngine", "busybox_image", "docker_containers", "docker_engine"]

IMAGE_REPOSITORY = "healer-test-busybox"
IMAGE = f"{IMAGE_REPOSITORY}:latest"
BUSYBOX = Path("/bin/busybox")
HEALTH_FILE = "/tmp/healthy"
HEALTH_INTERVAL_NS = 200_000_000

_INSTALL_HINT = (
    "Install Debian's Docker engine and static busybox: `apt-get install -y docker.io busybox-static` "
    "(scripts/test.sh installs them on a fresh machine)."
)
_START_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class DockerEngine:
    base_url: str  # unix:///tmp/healer-dockerd-.../docker.sock: what DOCKER_HOST would hold
    root: Path
    client: docker.DockerClient
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        """The engine's last log lines, for a failing test's message."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    dockerd = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None)
    if dockerd is None:
        pytest.fail(f"dockerd is not installed. {_INSTALL_HINT}")
    # A short path: containerd's sockets live under the exec root, and socket paths max at 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="healer-dockerd-", dir="/tmp"))
    try:
        process, engine = _start_dockerd(dockerd, root)
        try:
            yield engine
        finally:
            _stop_dockerd(process, engine)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start_dockerd(dockerd: str, root: Path) -> tuple[subprocess.Popen[bytes], DockerEngine]:
    socket = root / "docker.sock"
    config = root / "daemon.json"
    config.write_text("{}\n")  # never the machine's /etc/docker/daemon.json
    log_path = root / "dockerd.log"
    command = [
        dockerd,
        f"--host=unix://{socket}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'docker.pid'}",
        f"--config-file={config}",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
        "--storage-driver=vfs",
    ]
    with log_path.open("wb") as log:
        # Its own session: a Ctrl-C aimed at pytest must not kill the engine before teardown runs.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if not _wait_for_socket(process, socket):
        exit_code = process.poll()
        _stop_dockerd(process, None)
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        pytest.fail(
            f"dockerd did not start within {_START_TIMEOUT_SECONDS}s (exit code {exit_code}). "
            f"Its log ({log_path}):\n{tail}\nStart it by hand to see why: `{' '.join(command)}`. "
            f"{_INSTALL_HINT}"
        )
    client = docker.DockerClient(base_url=f"unix://{socket}", version="auto", timeout=30)
    return process, DockerEngine(f"unix://{socket}", root, client, log_path)


def _wait_for_socket(process: subprocess.Popen[bytes], socket: Path) -> bool:
    """Whether dockerd answers on its socket within the start timeout (False at once if it exits)."""
    def state() -> str | None:
        return "exited" if process.poll() is not None else "answering" if _answers(socket) else None

    try:
        return eventually(state, timeout=_START_TIMEOUT_SECONDS, interval=0.1, what="dockerd to answer") == "answering"
    except TimedOut:
        return False


def _answers(socket: Path) -> bool:
    if not socket.exists():
        return False
    try:
        client = docker.DockerClient(base_url=f"unix://{socket}", version="auto", timeout=5)
    except docker.errors.DockerException:
        return False  # the socket exists before the API answers on it
    client.close()
    return True


def _stop_dockerd(process: subprocess.Popen[bytes], engine: DockerEngine | None) -> None:
    if engine is not None:
        # Containers left running would outlive the engine as shim processes.
        for container in engine.client.containers.list(all=True):
            container.remove(force=True)
        engine.client.close()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def busybox_image(docker_engine: DockerEngine) -> str:
    if not BUSYBOX.is_file():
        pytest.fail(f"{BUSYBOX} is missing. {_INSTALL_HINT}")
    docker_engine.client.api.import_image_from_data(
        busybox_rootfs(), repository=IMAGE_REPOSITORY, tag="latest", changes=['CMD ["sleep", "3600"]']
    )
    return IMAGE


def busybox_rootfs() -> bytes:
    """A tar of / holding /bin/busybox, one symlink per applet, and a world-writable /tmp."""
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout.split()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for directory, mode in (("bin", 0o755), ("tmp", 0o1777), ("etc", 0o755)):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(link)
    return out.getvalue()


class Containers:
    """Runs containers of one compose project on the test engine; removes them all at the end."""

    def __init__(self, engine: DockerEngine, image: str) -> None:
        self.engine = engine
        self.image = image
        self.project = f"healer-test-{uuid.uuid4().hex[:8]}"
        self._started: list[Container] = []

    @property
    def label(self) -> str:
        """The label selecting this project's containers (what `DockerCheck.label` takes)."""
        return compose_project_label(self.project)

    def run(
        self,
        service: str,
        *,
        command: str | list[str] | None = None,
        healthcheck: bool = True,
        healthy: bool = True,
        labels: dict[str, str] | None = None,
        **options: Any,
    ) -> Container:
        """Start `{project}-{service}-1`, detached, without a network.

        With `healthcheck`, the container starts healthy (or, with `healthy=False`, unhealthy) and
        the test flips it with `make_healthy`/`make_unhealthy`. `options` go to `containers.run`
        (e.g. `mem_limit`, `restart_policy`).
        """
        if command is None:
            command = ["sh", "-c", f"{'touch ' + HEALTH_FILE + '; ' if healthy else ''}exec sleep 3600"]
        all_labels = {COMPOSE_PROJECT_LABEL: self.project, COMPOSE_SERVICE_LABEL: service, **(labels or {})}
        if healthcheck:
            options.setdefault("healthcheck", {
                "test": ["CMD", "test", "-f", HEALTH_FILE],
                "interval": HEALTH_INTERVAL_NS,
                "timeout": 2_000_000_000,
                "retries": 1,
                "start_period": 0,
            })
        container = self.engine.client.containers.run(
            self.image, command, name=f"{self.project}-{service}-1", labels=all_labels, detach=True,
            network_mode="none", **options,
        )
        self._started.append(container)
        return container

    def make_unhealthy(self, container: Container) -> None:
        container.exec_run(["rm", "-f", HEALTH_FILE])

    def make_healthy(self, container: Container) -> None:
        container.exec_run(["touch", HEALTH_FILE])

    def state(self, container: Container) -> dict[str, Any]:
        container.reload()
        return dict(container.attrs["State"])

    def health(self, container: Container) -> str | None:
        return (self.state(container).get("Health") or {}).get("Status")

    def wait_for(self, container: Container, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20.0,
                 what: str = "state") -> dict[str, Any]:
        """Poll the container's inspect data until `predicate(attrs)` holds; fail with its state if not."""
        def reached() -> dict[str, Any] | Unmet:
            container.reload()
            attrs: dict[str, Any] = container.attrs
            return attrs if predicate(attrs) else Unmet({k: attrs[k] for k in ("State", "RestartCount")})

        return cast(dict[str, Any], eventually(reached, timeout=timeout, interval=0.1,
                                               what=f"{container.name} to reach {what}"))

    def wait_for_health(self, container: Container, status: str, timeout: float = 20.0) -> None:
        self.wait_for(container, lambda a: (a["State"].get("Health") or {}).get("Status") == status,
                      timeout, what=f"health {status}")

    def remove_all(self) -> None:
        for container in self._started:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                continue
        self._started.clear()


@pytest.fixture
def docker_containers(docker_engine: DockerEngine, busybox_image: str) -> Iterator[Containers]:
    containers = Containers(docker_engine, busybox_image)
    try:
        yield containers
    finally:
        containers.remove_all()
