"""The scheduler (APScheduler, with a dead-man's switch per job) and the scheduled jobs that are
not checks: the stuck-order sweep, customer notices and refunds of orders that gave up."""
