"""Sensors of the migration (incremental sync)."""
