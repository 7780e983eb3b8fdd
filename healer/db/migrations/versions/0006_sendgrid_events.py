"""sendgrid events: the email events SendGrid's signed event webhook reported, by event id

Hand-written. One new table, nothing else changes: the upgrade is safe while the shop and older
daemons run (they never read it), and the downgrade drops only healer's record of which events it
has applied (a batch posted again after a downgrade and upgrade would add its story lines twice).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sendgrid_events',
        sa.Column('id', sa.String(length=255), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('result', sa.String(length=32), nullable=False),
        sa.Column('order_id', sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_sendgrid_events')),
    )


def downgrade() -> None:
    if op.get_context().dialect.name == 'sqlite':
        # Python's sqlite3 opens a transaction only at a data change, and commits DDL issued
        # before one at once: were a downgrade refused further down (0001, while orders exist), the
        # table would stay dropped under revision 0006. An empty DELETE opens the transaction first.
        op.execute('DELETE FROM sendgrid_events WHERE 1 = 0')
    op.drop_table('sendgrid_events')
