"""The guards of the self-healing actions (restart limits, flap window, scratch age and target),
read from the HEALER_AUTOHEAL_* settings by healer.wiring."""

from __future__ import annotations

from dataclasses import dataclass

from checks.disk import DiskCheck, Thresholds


@dataclass(frozen=True)
class RemediationPolicy:
    """The guards of the actions; the environment variables the settings read them from."""

    docker: bool = False  # HEALER_AUTOHEAL_DOCKER=on: restarts need the Docker socket
    unhealthy_seconds: float = 60.0  # HEALER_AUTOHEAL_UNHEALTHY_SECONDS: a blip is not an outage
    max_restarts: int = 3  # HEALER_AUTOHEAL_MAX_RESTARTS: per container per window
    window_seconds: float = 3600.0  # HEALER_AUTOHEAL_WINDOW_SECONDS
    stop_timeout_seconds: int = 10  # `docker restart -t`: SIGTERM, then SIGKILL after this
    # Younger files may belong to a render in flight (renders time out after 300 s).
    scratch_min_age_seconds: float = 900.0
    # Freed until the scratch file system is above the disk check's warning level, so it turns green.
    scratch_target: Thresholds = DiskCheck.warn_below
