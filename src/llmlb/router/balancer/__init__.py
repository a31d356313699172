"""Choosing a node: pure ranking and choice over node snapshots; no I/O."""
