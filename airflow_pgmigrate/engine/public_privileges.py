"""Source objects whose privileges are narrower than PostgreSQL's defaults for PUBLIC.

PostgreSQL lets every role (PUBLIC) execute a function or procedure and use a type or domain unless that grant is
revoked. Without ``schema_migration.migrate_grants`` pg_dump runs with ``--no-privileges``, so such a revoke is lost and
the object is open to every role on the destination. The precheck and the schema report name these objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

#: Routines without EXECUTE for PUBLIC, types and domains without USAGE for PUBLIC (extension members, array types,
#: table row types and C functions left out: they are not migrated by the schema migration), and database-wide default
#: privileges that revoke either from PUBLIC. Names are read with an empty search_path, as pg_dump writes them.
_NARROWED_SQL = """
SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END, n.nspname,
       p.proname || '(' || coalesce((SELECT string_agg(format_type(a.t, NULL), ', ' ORDER BY a.i)
                                       FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i)), '') || ')',
       format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)), 'EXECUTE'
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
 WHERE n.nspname = ANY(%(schemas)s) AND l.lanname <> 'c' AND p.proacl IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM aclexplode(p.proacl) x WHERE x.grantee = 0 AND x.privilege_type = 'EXECUTE')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                   AND d.deptype = 'e')
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname,
       format('%%I.%%I', n.nspname, t.typname), 'USAGE'
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace LEFT JOIN pg_class r ON r.oid = t.typrelid
 WHERE n.nspname = ANY(%(schemas)s) AND t.typacl IS NOT NULL AND (t.typrelid = 0 OR r.relkind = 'c')
   AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid)
   AND NOT EXISTS (SELECT 1 FROM aclexplode(t.typacl) x WHERE x.grantee = 0 AND x.privilege_type = 'USAGE')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                   AND d.deptype = 'e')
UNION ALL
SELECT 'DEFAULT ACL', NULL, pg_get_userbyid(a.defaclrole),
       format('default privileges of %%I on %%s', pg_get_userbyid(a.defaclrole),
              CASE a.defaclobjtype WHEN 'f' THEN 'functions' ELSE 'types' END),
       CASE a.defaclobjtype WHEN 'f' THEN 'EXECUTE' ELSE 'USAGE' END
  FROM pg_default_acl a
 WHERE a.defaclnamespace = 0 AND a.defaclobjtype IN ('f', 'T')
   AND NOT EXISTS (SELECT 1 FROM aclexplode(a.defaclacl) x WHERE x.grantee = 0
                   AND x.privilege_type = CASE a.defaclobjtype WHEN 'f' THEN 'EXECUTE' ELSE 'USAGE' END)
ORDER BY 1, 4
"""


@dataclass(frozen=True)
class NarrowedObject:
    """One object PUBLIC may not use on the source; ``kind``, ``schema`` and ``tag`` as pg_dump names its entry."""

    kind: str
    schema: str | None
    tag: str
    name: str
    privilege: str

    def __str__(self) -> str:
        what = self.name if self.kind == "DEFAULT ACL" else f"{self.kind.lower()} {self.name}"
        return f"{what} (no {self.privilege} for PUBLIC)"


def narrowed_public_privileges(conn: psycopg.Connection, schemas: list[str]) -> list[NarrowedObject]:
    """The objects of ``schemas`` (and the database-wide default privileges) that revoke a default PUBLIC grant."""
    path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]  # type: ignore[index]
    conn.execute("SELECT set_config('search_path', '', false)")
    try:
        rows = conn.execute(_NARROWED_SQL, {"schemas": list(schemas)}).fetchall()
    finally:
        conn.execute("SELECT set_config('search_path', %s, false)", (path,))
    return [NarrowedObject(*row) for row in rows]


__all__ = ["NarrowedObject", "narrowed_public_privileges"]
