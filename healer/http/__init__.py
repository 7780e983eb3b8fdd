"""HTTP: two listeners with two apps, so that what customers can reach is only what they need.

- `public` (HEALER_HTTP_HOST/PORT): customers, Stripe and SendGrid: completion, the customer's view
  of an order, download links, webhooks. Everything else is 404 there: no health, metrics or docs.
- `operator` (HEALER_OPS_HOST/PORT, a private network): probes, health, metrics, the operator view
  of orders and the admin API, and both OpenAPI schemas.

Both wear the same layers (`layers.py`): HEAD wherever GET is, every request counted, and no
answer that is a traceback (`errors.py`). Both describe every status they answer, with typed
bodies (`openapi.py`), so that a client can be generated from either document.
"""
