"""order status tally: the number of orders in each status, kept by the database itself

Hand-written. `/metrics` counted every order by status on each refresh, which reads every order:
at a million orders that is a scan of the whole table. Here the database keeps the counts as it
writes: triggers on `orders` append one row per status a statement changed (+n, -n) to
`order_status_tally`, and the count of a status is the sum of its rows. Appending rather than
updating one row per status means no writer waits on another's counter, and no deadlocks;
healer.db.tally folds the rows back into one per status now and then. Canary orders (`is_canary`)
are never counted, as in every business figure.

PostgreSQL: statement-level triggers with transition tables, so a statement that writes many
orders (a bulk import) adds one row per status, and an UPDATE that changes no status (a lease
renewal) adds none. TRUNCATE of `orders` empties the tally. SQLite: row triggers (SQLite has no
statement triggers); one process writes it. A later migration that rebuilds `orders` on SQLite (a
batch copy) drops these triggers and must create them again.

The upgrade counts the orders there are, in the same transaction as creating the triggers (which
holds writers back until it commits), so no order is counted twice or missed. It is safe while the
shop runs: the shop's writes to `orders` are unchanged, each now also appends to the tally. The
downgrade drops only the triggers and the tally.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

BACKFILL = ("INSERT INTO order_status_tally (status, delta) "
            "SELECT status, count(*) FROM orders WHERE NOT is_canary GROUP BY status")

POSTGRESQL = [
    """
    CREATE FUNCTION healer_tally_order_statuses() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO order_status_tally (status, delta)
            SELECT status, count(*) FROM new_orders WHERE NOT is_canary GROUP BY status;
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO order_status_tally (status, delta)
            SELECT status, -count(*) FROM old_orders WHERE NOT is_canary GROUP BY status;
        ELSE
            INSERT INTO order_status_tally (status, delta)
            SELECT status, sum(delta) FROM (
                SELECT status, -1 AS delta FROM old_orders WHERE NOT is_canary
                UNION ALL
                SELECT status, 1 AS delta FROM new_orders WHERE NOT is_canary
            ) AS changes
            GROUP BY status HAVING sum(delta) <> 0;
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION healer_empty_order_status_tally() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM order_status_tally;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER orders_tally_insert AFTER INSERT ON orders REFERENCING NEW TABLE AS new_orders "
    "FOR EACH STATEMENT EXECUTE FUNCTION healer_tally_order_statuses()",
    "CREATE TRIGGER orders_tally_update AFTER UPDATE ON orders "
    "REFERENCING OLD TABLE AS old_orders NEW TABLE AS new_orders "
    "FOR EACH STATEMENT EXECUTE FUNCTION healer_tally_order_statuses()",
    "CREATE TRIGGER orders_tally_delete AFTER DELETE ON orders REFERENCING OLD TABLE AS old_orders "
    "FOR EACH STATEMENT EXECUTE FUNCTION healer_tally_order_statuses()",
    "CREATE TRIGGER orders_tally_truncate AFTER TRUNCATE ON orders "
    "FOR EACH STATEMENT EXECUTE FUNCTION healer_empty_order_status_tally()",
]

SQLITE = [
    """
    CREATE TRIGGER orders_tally_insert AFTER INSERT ON orders WHEN NOT NEW.is_canary
    BEGIN
        INSERT INTO order_status_tally (status, delta) VALUES (NEW.status, 1);
    END
    """,
    """
    CREATE TRIGGER orders_tally_update AFTER UPDATE OF status, is_canary ON orders
    WHEN OLD.status IS NOT NEW.status OR OLD.is_canary IS NOT NEW.is_canary
    BEGIN
        INSERT INTO order_status_tally (status, delta) SELECT OLD.status, -1 WHERE NOT OLD.is_canary;
        INSERT INTO order_status_tally (status, delta) SELECT NEW.status, 1 WHERE NOT NEW.is_canary;
    END
    """,
    """
    CREATE TRIGGER orders_tally_delete AFTER DELETE ON orders WHEN NOT OLD.is_canary
    BEGIN
        INSERT INTO order_status_tally (status, delta) VALUES (OLD.status, -1);
    END
    """,
]


def upgrade() -> None:
    op.create_table(
        'order_status_tally',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('status', sa.String(length=32), nullable=False),
        sa.Column('delta', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_order_status_tally')),
    )
    for statement in POSTGRESQL if op.get_context().dialect.name == 'postgresql' else SQLITE:
        op.execute(statement)
    op.execute(BACKFILL)


def downgrade() -> None:
    if op.get_context().dialect.name == 'sqlite':
        # As in 0006: open the transaction before the DDL, so that a downgrade refused further down
        # (0001, while orders exist) rolls these drops back too.
        op.execute('DELETE FROM order_status_tally WHERE 1 = 0')
        for trigger in ('orders_tally_insert', 'orders_tally_update', 'orders_tally_delete'):
            op.execute(f'DROP TRIGGER {trigger}')
    else:
        for trigger in ('orders_tally_insert', 'orders_tally_update', 'orders_tally_delete', 'orders_tally_truncate'):
            op.execute(f'DROP TRIGGER {trigger} ON orders')
        op.execute('DROP FUNCTION healer_tally_order_statuses()')
        op.execute('DROP FUNCTION healer_empty_order_status_tally()')
    op.drop_table('order_status_tally')
