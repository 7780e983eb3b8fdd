"""What Stripe tells healer and what healer asks of it: signed webhooks, reconciliation of paid
orders against Stripe's payments, and orphan payments (money no order claims)."""
