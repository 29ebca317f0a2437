"""The source's foreign keys as post-data builds them: one per key, on a partitioned table rather than on each of its
partitions, with the referencing and referenced columns in key order."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from airflow_pgmigrate.engine.identifiers import QualifiedName

_KEYS_SQL = """
SELECT n.nspname, t.relname, k.conname, rn.nspname, r.relname,
       (SELECT array_agg(a.attname ORDER BY x.i) FROM unnest(k.conkey) WITH ORDINALITY AS x(num, i)
          JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = x.num),
       (SELECT array_agg(a.attname ORDER BY x.i) FROM unnest(k.confkey) WITH ORDINALITY AS x(num, i)
          JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = x.num)
  FROM pg_constraint k
  JOIN pg_class t ON t.oid = k.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
 WHERE k.contype = 'f'{inherited}
 ORDER BY 1, 2, 3
"""


@dataclass(frozen=True)
class ForeignKey:
    table: QualifiedName
    constraint: str
    referenced: QualifiedName
    columns: tuple[str, ...]
    referenced_columns: tuple[str, ...]


def foreign_keys(conn: psycopg.Connection) -> list[ForeignKey]:
    """Every foreign key of the source (a key a partition inherits, PostgreSQL 11+, is its partitioned table's)."""
    inherited = " AND k.conparentid = 0" if conn.info.server_version >= 110000 else ""
    return [ForeignKey(QualifiedName(s, t), k, QualifiedName(rs, r), tuple(cols), tuple(ref_cols))
            for s, t, k, rs, r, cols, ref_cols in conn.execute(_KEYS_SQL.format(inherited=inherited)).fetchall()]


__all__ = ["ForeignKey", "foreign_keys"]
