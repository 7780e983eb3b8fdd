"""Health: the monitor that runs the checks on their schedules and caches their results (for
/readyz, /health and the step gate), and the Prometheus metrics computed from what checks, steps
and jobs report."""
