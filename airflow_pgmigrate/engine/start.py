"""The start of incremental sync without a full load (``[incremental]``, ``[schema, incremental]``): the
destination was loaded by other means, so this step creates the publication and then the slot (in that order: a
publication created after the slot makes decoding fail), and records the LSN where sync starts. Idempotent: a
retry finds the slot and keeps its position.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_pgmigrate.engine import catalog
from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.names import TableSelector
from airflow_pgmigrate.engine.publication import ensure_publication, leaf_tables
from airflow_pgmigrate.engine.state import MigrationState

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig

START_KEY = "incremental_start"


def start_incremental(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                      log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Create the publication and the slot (unless they exist), record where sync starts; returns that record."""
    state = MigrationState(destination, config.state_schema, config.name)
    with connect(source) as src:
        selector = TableSelector(config.objects)
        selected = [t.name for t in catalog.list_tables(src) if selector(t.name) and not t.is_partition]
        tables = leaf_tables(src, selected)
        ensure_publication(src, config, tables, log)
        row = src.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                          (config.slot_name,)).fetchone()
        created = row is None
        if created:
            row = src.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                              (config.slot_name,)).fetchone()
    assert row is not None
    # A retry finds the slot and keeps the recorded start; a slot created now (the first start, or one after an
    # abort dropped the earlier slot) starts here, and nothing before it is captured.
    previous = {} if created else state.get(START_KEY) or {}
    record = {"slot": config.slot_name, "publication": config.publication_name, "tables": len(tables),
              "start_lsn": previous.get("start_lsn") or str(row[0]),
              "started_at": previous.get("started_at") or datetime.now(UTC).isoformat(), "slot_created": created}
    state.put(START_KEY, record)
    log(f"incremental start slot={config.slot_name} created={created} start_lsn={record['start_lsn']} "
        f"publication={config.publication_name} tables={len(tables)}")
    return record


__all__ = ["START_KEY", "start_incremental"]
