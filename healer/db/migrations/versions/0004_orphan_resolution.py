"""orphan payments: resolved_at and resolution, so a dealt-with orphan stops counting

Hand-written. Two nullable columns on healer's own `orphan_payments`: existing rows stay, unresolved,
and nothing the shop's web API reads or writes changes, so the upgrade is safe while the shop runs.
Older daemons ignore the columns (they count every row, as they always did). The downgrade drops
only the columns, and with them the record of who resolved what.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (SQLite adds a nullable column without a table copy).
    op.add_column('orphan_payments', sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('orphan_payments', sa.Column('resolution', sa.String(length=2000), nullable=True))


def downgrade() -> None:
    if op.get_context().dialect.name == 'sqlite':
        # SQLite commits the CREATE of the batch's copy at once: a downgrade refused further down
        # (0001 keeps orders) rolls the rest back and leaves this empty copy, which would stop the
        # next attempt. It never holds data a finished downgrade needs.
        op.execute('DROP TABLE IF EXISTS _alembic_tmp_orphan_payments')
    with op.batch_alter_table('orphan_payments') as batch:  # SQLite: a table copy, where needed
        batch.drop_column('resolution')
        batch.drop_column('resolved_at')
