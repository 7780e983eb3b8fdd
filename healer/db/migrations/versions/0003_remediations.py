"""remediations: the audit of self-healing actions

Hand-written. One new table, nothing else changes: the upgrade is safe while the shop and older
daemons run (they never read it), and the downgrade drops only healer's own audit trail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'remediations',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('action', sa.String(length=32), nullable=False),
        sa.Column('target', sa.String(length=255), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('result', sa.String(length=16), nullable=False),
        sa.Column('mode', sa.String(length=8), nullable=False),
        sa.Column('detail', sa.Text(), server_default='', nullable=False),
        sa.Column('worker', sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_remediations')),
    )
    op.create_index('ix_remediations_at', 'remediations', ['at'], unique=False)
    op.create_index('ix_remediations_action_target', 'remediations', ['action', 'target', 'at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_remediations_action_target', table_name='remediations')
    op.drop_index('ix_remediations_at', table_name='remediations')
    op.drop_table('remediations')
