"""Stopping a peer's process (moto's server, Prometheus) at the end of a test or a benchmark."""

from __future__ import annotations

import subprocess


def terminate(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout` seconds: the run must not hang
    on a peer that ignores the signal, nor leave one behind."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
