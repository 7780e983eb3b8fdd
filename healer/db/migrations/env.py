"""Alembic environment: migrations run on the engine that `healer.db.upgrade` hands in."""

from alembic import context

import healer.db.models
import healer.remediation.audit  # noqa: F401  - registers the remediation audit table too
from fulfilment.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
