"""The scheduler (APScheduler: jobs gated on the checks they depend on, liveness, a dead-man's
switch per job) and the scheduled jobs that are not checks: the stuck-order sweep (stuck), customer
notices (notices), refunds of orders that gave up (refunds) and the synthetic canary order
(canary, canary_results)."""
