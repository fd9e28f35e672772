"""Operator tools: they use events and the lower layers, and are started by the container's scripts."""
