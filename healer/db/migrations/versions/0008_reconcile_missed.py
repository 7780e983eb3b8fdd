"""reconcile runs: payments_succeeded and payments_missed, the sales each run judged

Hand-written. Two integer columns on healer's own `reconcile_runs`, NOT NULL with a server default
of 0, so existing runs read as having judged nothing and older daemons (which never name them) keep
recording runs. Nothing the shop's web API reads or writes changes. The downgrade drops only these
columns, and with them the history healer_webhook_missed_runs_in_a_row is computed from.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('reconcile_runs', sa.Column('payments_succeeded', sa.Integer(), server_default='0', nullable=False))
    op.add_column('reconcile_runs', sa.Column('payments_missed', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    if op.get_context().dialect.name == 'sqlite':
        # As in 0006: open the transaction before the DDL, so that a downgrade refused further down
        # (0001, while orders exist) rolls these drops back too. SQLite (3.35 and later) drops a
        # plain column in place: no table copy to leave behind.
        op.execute('DELETE FROM reconcile_runs WHERE 1 = 0')
    op.drop_column('reconcile_runs', 'payments_missed')
    op.drop_column('reconcile_runs', 'payments_succeeded')
