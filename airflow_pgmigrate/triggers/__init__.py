"""Triggers of the migration (deferrable waits)."""
