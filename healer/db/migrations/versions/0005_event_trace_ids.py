"""order events: the trace and span of the completion attempt that wrote them

Hand-written. Two nullable columns on `order_events`, written when tracing is on
(OTEL_TRACES_EXPORTER), so that an order's timeline names each attempt's trace and a webhook's or a
reconciliation's span can link to the order it touches. Existing rows stay without them; older
daemons ignore them. The downgrade drops only these columns.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('order_events', sa.Column('trace_id', sa.String(length=32), nullable=True))
    op.add_column('order_events', sa.Column('span_id', sa.String(length=16), nullable=True))


def downgrade() -> None:
    if op.get_context().dialect.name == 'sqlite':
        # As in 0004: a batch copy left behind by a refused downgrade would stop the next attempt.
        op.execute('DROP TABLE IF EXISTS _alembic_tmp_order_events')
    with op.batch_alter_table('order_events') as batch:
        batch.drop_column('span_id')
        batch.drop_column('trace_id')
