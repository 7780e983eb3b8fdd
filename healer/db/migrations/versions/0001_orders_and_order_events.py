"""orders and order events

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('orders',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=32), server_default='pending_payment', nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('session_token', sa.String(length=128), nullable=True),
    sa.Column('stripe_payment_intent_id', sa.String(length=255), nullable=True),
    sa.Column('amount_cents', sa.Integer(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('template', sa.String(length=64), nullable=False),
    sa.Column('title', sa.Text(), server_default='', nullable=False),
    sa.Column('subtitle', sa.Text(), server_default='', nullable=False),
    sa.Column('photo_key', sa.String(length=1024), nullable=True),
    sa.Column('audio_key', sa.String(length=1024), nullable=True),
    sa.Column('waveform_key', sa.String(length=1024), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('payment_verified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('final_pdf_key', sa.String(length=1024), nullable=True),
    sa.Column('download_token', sa.String(length=64), nullable=True),
    sa.Column('email_message_id', sa.String(length=255), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error_step', sa.String(length=32), nullable=True),
    sa.Column('last_error_class', sa.String(length=32), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('download_token', name=op.f('uq_orders_download_token'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_due', ['next_attempt_at'], unique=False)
        batch_op.create_index('ix_orders_payment_intent', ['stripe_payment_intent_id'], unique=False)
        batch_op.create_index('ix_orders_status', ['status'], unique=False)

    op.create_table('order_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('order_id', sa.Uuid(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('step', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('duration_seconds', sa.Float(), nullable=False),
    sa.Column('error_class', sa.String(length=32), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_order_events_order_id_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_order_events'))
    )
    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_order_events_order_id'), ['order_id'], unique=False)



def downgrade() -> None:
    # Dropping these tables destroys every order and its story: customers' paid posters, their
    # download links, the payment each was verified against. Only an empty schema goes quietly.
    from alembic import context
    from alembic.util import CommandError

    how = (
        "To go back to an older release, run that release against this schema, or restore the "
        "database from a backup taken before `healer db upgrade`. If the orders really must go, save "
        "them first (`pg_dump --data-only -t orders -t order_events`), delete them yourself, then "
        "downgrade again."
    )
    if context.is_offline_mode():
        raise CommandError(
            "Refusing to generate SQL that drops the orders and order_events tables: offline (--sql) "
            "mode cannot tell whether they hold orders, and dropping them would destroy every order. " + how
        )
    bind = op.get_bind()
    orders = bind.execute(sa.text('SELECT count(*) FROM orders')).scalar_one()
    events = bind.execute(sa.text('SELECT count(*) FROM order_events')).scalar_one()
    if orders or events:
        raise CommandError(
            f"Refusing to downgrade revision 0001: it would drop the orders and order_events tables, "
            f"destroying {orders} order(s) and {events} order event(s). Nothing was changed: the whole "
            f"downgrade is rolled back. " + how
        )

    with op.batch_alter_table('order_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_order_events_order_id'))

    op.drop_table('order_events')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_status')
        batch_op.drop_index('ix_orders_payment_intent')
        batch_op.drop_index('ix_orders_due')

    op.drop_table('orders')
