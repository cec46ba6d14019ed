"""Helpers shared by the transfer-core tests (bounded waits, state recorders, store snapshots)."""
