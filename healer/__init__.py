"""healer: durable order completion, health checks, metrics and self-healing for the poster shop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("healer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
