"""Self-healing: the actions healer may take on its own (restart a container, redraw a waveform,
render a lost PDF again, free scratch space, resume waiting orders) and the audit of every one."""
