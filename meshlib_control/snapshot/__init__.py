"""Snapshots: the pure builder and the watch cache."""
