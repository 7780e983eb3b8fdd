"""Rendering outside the daemon: `pool` (the daemon's side: render processes started on demand,
each render under a time limit, a failed process thrown away whole) and `process` (what runs
inside a render process, and nothing else).

Empty on purpose: a render process imports `healer.render.process`, and with it this package; what
the pool imports (the daemon's settings, tracing) has no business there.
"""
