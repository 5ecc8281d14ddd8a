"""hitl: the composition root (settings and the `hitl` command line)."""
