"""Fixtures for real peers, and the suite's markers. Each peer's fixtures live beside its server in
tests/fakes/, loaded here as plugins: pytest's own way to share fixture modules (their fixtures are
found without importing names into this module, and a new fixture needs no edit here)."""

import logging
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fakes.db_fixtures",
    "tests.fakes.docker_fixtures",
    "tests.fakes.proxy_fixtures",
    "tests.fakes.render_fixtures",
    "tests.fakes.s3_fixtures",
    "tests.fakes.sendgrid_fixtures",
    "tests.fakes.stripe_fixtures",
    "tests.fakes.shop_fixtures",
]

TESTS = Path(__file__).parent
MARKED_BY_DIRECTORY = ("e2e", "faults")  # tests/e2e/ and tests/faults/ are marked by their directory's name


@pytest.fixture(autouse=True)
def _quiet_moto() -> None:
    # moto's server logs every request at INFO: it drowns the lines a failing test needs.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The markers registered in pyproject.toml that follow from where a test is or what it uses:
    `e2e` and `faults` by directory, `docker` for every test on the real dockerd (the
    `docker_engine` fixture, directly or through another fixture). `serial` (scripts/test.sh runs
    those alone, after the rest) for the fault run and every test on dockerd, whose containers
    another test's listing would see; by hand on the tests that stop PostgreSQL or time themselves.
    `slow` is set by hand on each test that takes over ~10 s."""
    for item in items:
        directory = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if directory in MARKED_BY_DIRECTORY:
            item.add_marker(directory)
        if "docker_engine" in getattr(item, "fixturenames", ()):
            item.add_marker("docker")
            item.add_marker("serial")
        if directory == "faults":
            item.add_marker("serial")
