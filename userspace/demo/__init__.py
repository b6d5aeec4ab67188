"""Demonstrations of the userspace stack on real networks (`accel-demo`), and the models they build."""
