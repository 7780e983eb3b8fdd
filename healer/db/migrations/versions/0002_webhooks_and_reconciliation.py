"""webhook events, reconciliation runs and state, orphan payments, order notices

Hand-written. Only new tables: nothing the shop's web API reads or writes (`orders`) changes, so
the upgrade is safe while the shop runs, and the downgrade drops nothing but healer's own records.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'webhook_events',
        sa.Column('id', sa.String(length=255), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('result', sa.String(length=32), nullable=False),
        sa.Column('order_id', sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    )
    op.create_table(
        'reconcile_runs',
        sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('payments_read', sa.Integer(), server_default='0', nullable=False),
        sa.Column('orders_repaired', sa.Integer(), server_default='0', nullable=False),
        sa.Column('orphans_found', sa.Integer(), server_default='0', nullable=False),
        sa.Column('stripe_requests', sa.Integer(), server_default='0', nullable=False),
        sa.Column('result', sa.String(length=16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('worker', sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_reconcile_runs')),
    )
    op.create_table(
        'reconcile_state',
        sa.Column('name', sa.String(length=32), nullable=False),
        sa.Column('cursor_created', sa.BigInteger(), nullable=True),
        sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_owner', sa.String(length=128), nullable=True),
        sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_reconcile_state')),
    )
    op.create_table(
        'orphan_payments',
        sa.Column('payment_intent_id', sa.String(length=255), nullable=False),
        sa.Column('amount_cents', sa.BigInteger(), nullable=False),
        sa.Column('currency', sa.String(length=3), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.Column('metadata_order_id', sa.String(length=255), nullable=True),
        sa.Column('first_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('payment_intent_id', name=op.f('pk_orphan_payments')),
    )
    op.create_table(
        'order_notices',
        sa.Column('order_id', sa.Uuid(), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('detail', sa.Text(), server_default='', nullable=False),
        sa.ForeignKeyConstraint(
            ['order_id'], ['orders.id'],
            name=op.f('fk_order_notices_order_id_orders'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('order_id', 'kind', name=op.f('pk_order_notices')),
    )


def downgrade() -> None:
    # orphan_payments holds money facts: customers who paid with no order to fulfil, each still to be
    # refunded or claimed. Dropping it forgets them (reconciliation reads Stripe 3 days back only),
    # so the downgrade refuses while it holds any. The other tables are healer's own bookkeeping:
    # event ids (replays are handled idempotently anyway), the reconcile cursor and history, and
    # which orders got a "delayed" email.
    from alembic import context
    from alembic.util import CommandError

    how = (
        "Deal with them first (`healer orphans list --all --json`: refund or claim each), or save "
        "them (`pg_dump --data-only -t orphan_payments`) and delete them yourself, then downgrade "
        "again; or restore the database from a backup taken before `healer db upgrade`."
    )
    if context.is_offline_mode():
        raise CommandError(
            "Refusing to generate SQL that drops the orphan_payments table: offline (--sql) mode cannot "
            "tell whether it records payments without an order. " + how
        )
    orphans = op.get_bind().execute(sa.text('SELECT count(*) FROM orphan_payments')).scalar_one()
    if orphans:
        raise CommandError(
            f"Refusing to downgrade revision 0002: it would drop the orphan_payments table, forgetting "
            f"{orphans} payment(s) that no order claims (customers' money to refund or match). Nothing "
            f"was changed: the whole downgrade is rolled back. " + how
        )

    op.drop_table('order_notices')
    op.drop_table('orphan_payments')
    op.drop_table('reconcile_state')
    op.drop_table('reconcile_runs')
    op.drop_table('webhook_events')
