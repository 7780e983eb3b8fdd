"""Fixtures for real peers. Each peer's fixtures live beside its server in tests/fakes/."""

import logging

import pytest

from tests.fakes.db_fixtures import *  # noqa: F401,F403
from tests.fakes.docker_fixtures import *  # noqa: F401,F403
from tests.fakes.render_fixtures import *  # noqa: F401,F403
from tests.fakes.s3_fixtures import *  # noqa: F401,F403
from tests.fakes.sendgrid_fixtures import *  # noqa: F401,F403
from tests.fakes.stripe_fixtures import *  # noqa: F401,F403
from tests.fakes.shop_fixtures import *  # noqa: F401,F403


@pytest.fixture(autouse=True)
def _quiet_moto() -> None:
    # moto's server logs every request at INFO: it drowns the lines a failing test needs.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
