"""The names of the precheck's items, in the order the report lists them (``precheck.skip`` takes these)."""

from __future__ import annotations

CHECK_NAMES: tuple[str, ...] = (
    "source_connection",
    "destination_connection",
    "source_version",
    "version_match",
    "wal_level",
    "replication_capacity",
    "source_privileges",
    "destination_privileges",
    "publication",
    "ddl_capture",
    "selected_objects",
    "row_filters",
    "name_mapping",
    "primary_keys",
    "c_functions",
    "not_migrated",
    "privileges_not_migrated",
    "unlogged_tables",
    "name_conflicts",
    "extensions",
    "xml_support",
    "destination_large_objects",
    "pg_dump",
    "destination_space",
    "long_transactions",
    "prepared_transactions",
    "rds_instance",
    "rds_endpoint",
    "rds_logical_replication",
    "rds_public_access",
    "rds_security_group",
    "rds_storage",
)


__all__ = ["CHECK_NAMES"]
