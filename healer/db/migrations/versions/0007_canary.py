"""orders: is_canary, the mark of the canary's synthetic order

Hand-written. One boolean column on `orders`, NOT NULL with a server default of false, so the
shop's checkout (which never names it) and older daemons keep inserting ordinary orders. A canary
row lives only while a canary runs (healer.jobs.canary); every business figure leaves it out. The
downgrade drops only this column: should a canary row be there at that moment, it is deleted first,
with its story, rather than left to be counted as a customer's order.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('orders', sa.Column('is_canary', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.execute('DELETE FROM order_events WHERE order_id IN (SELECT id FROM orders WHERE is_canary)')
    op.execute('DELETE FROM orders WHERE is_canary')
    if op.get_context().dialect.name == 'sqlite':
        # In place (SQLite 3.35+), not as a batch copy: that drops and re-creates `orders`, and with
        # foreign keys on, dropping it deletes every order's story (ON DELETE CASCADE).
        op.execute('ALTER TABLE orders DROP COLUMN is_canary')
    else:
        op.drop_column('orders', 'is_canary')
