"""Non-streamed state: what logical decoding does not carry, sequence values and large objects.

One module reads this state from the source (in a snapshot when given one), applies it to the destination and
compares the two sides. The full load brings it over inside its snapshot, the cutover again after the drain (large
objects created, changed or deleted during sync included), and verification compares it.

Sequences: every sequence the schema step migrates (those of the migrated schemas, those the selected tables own or
use), under its destination name. A destination sequence is only ever moved forward in the sequence's own direction
(up for an ascending one, down for a descending one), so setting it twice never hands out a value twice.
The cutover's ``sequence_offset`` moves it further away from the values already used, within the sequence's bounds.

Large objects: the database's large objects, all of them (they belong to no schema). Each side computes a digest of
every object's data in pieces on the server, so only digests cross the network; objects whose digest differs are
copied again, objects gone from the source are unlinked on the destination. Their owners and grants are carried as
the schema step carries every other object's (``schema_migration.owner_mapping`` and ``migrate_grants``, onto roles
that exist on the destination), and then compared too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.names import NameMapper, QualifiedName

if TYPE_CHECKING:
    from airflow_pgmigrate.config import MigrationConfig
    from airflow_pgmigrate.engine.schema import SourceSchema

#: Bytes of a large object read (or digested) at a time.
LO_PIECE = 1024 * 1024
#: Large objects copied per destination transaction (their first pieces held in memory at once: at most this many
#: pieces).
LO_BATCH = 32
#: Objects named per kind of difference at most (the counts are always exact).
MAX_NAMED = 100

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


# -- sequences -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceState:
    """One sequence of the source as read: its value and what bounds and direction it has."""

    source: QualifiedName
    target: QualifiedName
    last_value: int
    is_called: bool
    increment: int
    minimum: int
    maximum: int

    @property
    def position(self) -> int:
        """The last value handed out (or, before the first nextval, the one before the start)."""
        return self.last_value if self.is_called else self.last_value - self.increment

    def ahead_of(self, other: int) -> bool:
        """Whether this position is at or beyond ``other`` in the sequence's direction."""
        return self.position >= other if self.increment > 0 else self.position <= other

    def with_offset(self, offset: int) -> tuple[int, bool]:
        """(value, is_called) for ``setval``: ``offset`` away from the used values, within the bounds."""
        if not offset:
            return self.last_value, self.is_called
        if self.increment > 0:
            return min(self.maximum, max(self.minimum, self.position + offset)), True
        return max(self.minimum, min(self.maximum, self.position - offset)), True


_SEQUENCES = """
    SELECT n.nspname, c.relname, s.seqincrement, s.seqmin, s.seqmax
      FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                         AND d.deptype = 'e')
     ORDER BY 1, 2
"""


def migrated_sequences(config: MigrationConfig, src: psycopg.Connection,
                       schema: SourceSchema | None = None) -> dict[QualifiedName, tuple[int, int, int]]:
    """The sequences the schema step migrates, with (increment, minimum, maximum): every sequence of a migrated
    schema (but those owned by a table left out), and those the selected tables own or use elsewhere."""
    from airflow_pgmigrate.engine.schema import read_source_schema

    schema = schema or read_source_schema(src, config)
    needed = {QualifiedName(s, n) for kind, s, n in schema.needed if kind == "SEQUENCE" and s}
    out = {}
    for nsp, rel, increment, minimum, maximum in src.execute(_SEQUENCES).fetchall():
        name = QualifiedName(nsp, rel)
        owner = schema.sequence_owners.get(name)
        whole = nsp in schema.whole_schemas and (owner is None or owner in schema.selected)
        if whole or name in needed or (owner is not None and owner in schema.selected):
            out[name] = (int(increment), int(minimum), int(maximum))
    return out


def read_sequences(config: MigrationConfig, src: psycopg.Connection,
                   schema: SourceSchema | None = None) -> list[SequenceState]:
    """Each migrated sequence's value on ``src`` (in whatever snapshot its transaction holds)."""
    mapper = NameMapper(config.mapping)
    states = []
    for name, (increment, minimum, maximum) in sorted(migrated_sequences(config, src, schema).items()):
        row = src.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
            sql.Identifier(name.schema, name.name))).fetchone()
        assert row is not None
        states.append(SequenceState(name, mapper.table(name), int(row[0]), bool(row[1]), increment, minimum,
                                    maximum))
    return states


def _destination_value(dst: psycopg.Connection, target: QualifiedName) -> tuple[int, bool] | None:
    ident = sql.Identifier(target.schema, target.name)
    exists = dst.execute("SELECT to_regclass(%s) IS NOT NULL", (ident.as_string(dst),)).fetchone()
    if not exists or not exists[0]:
        return None
    row = dst.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(ident)).fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def _position(state: SequenceState, value: tuple[int, bool]) -> int:
    return value[0] if value[1] else value[0] - state.increment


def apply_sequences(dst: psycopg.Connection, states: list[SequenceState], offset: int = 0) -> list[dict[str, Any]]:
    """Set each destination sequence from the source's state (``offset`` away from the used values); never moves
    a destination sequence back. Returns one entry per sequence (``missing`` when the destination lacks it)."""
    out: list[dict[str, Any]] = []
    for state in states:
        entry: dict[str, Any] = {"sequence": str(state.target), "source": str(state.source),
                                 "direction": "ascending" if state.increment > 0 else "descending"}
        current = _destination_value(dst, state.target)
        if current is None:
            out.append({**entry, "missing": True})
            continue
        value, called = state.with_offset(offset)
        if offset and value != state.position + (offset if state.increment > 0 else -offset):
            entry["offset_cut_short"] = True  # the bound (MAXVALUE / MINVALUE) leaves less room than asked
        wanted = SequenceState(state.source, state.target, value, called, state.increment, state.minimum,
                               state.maximum)
        if wanted.ahead_of(_position(state, current)) and (value, called) != current:
            dst.execute("SELECT setval(%s::regclass, %s, %s)",
                        (sql.Identifier(state.target.schema, state.target.name).as_string(dst), value, called))
            out.append({**entry, "value": value, "is_called": called})
        else:
            out.append({**entry, "value": current[0], "is_called": current[1], "kept": True})
    return out


def compare_sequences(states: list[SequenceState], dst: psycopg.Connection) -> list[dict[str, Any]]:
    """Per sequence: equal when the destination is at or beyond the source in the sequence's direction."""
    out = []
    for state in states:
        current = _destination_value(dst, state.target)
        entry: dict[str, Any] = {"sequence": str(state.target), "source": str(state.source),
                                 "source_value": state.position,
                                 "direction": "ascending" if state.increment > 0 else "descending"}
        if current is None:
            out.append({**entry, "destination_value": None, "equal": False, "problem": "missing on the destination"})
            continue
        position = _position(state, current)
        equal = position >= state.position if state.increment > 0 else position <= state.position
        out.append({**entry, "destination_value": position, "equal": equal,
                    "problem": None if equal else f"behind the source ({position} against {state.position})"})
    return out


# -- large objects ---------------------------------------------------------------------------------------------


def large_object_digests(conn: psycopg.Connection) -> dict[int, str]:
    """oid -> digest of the object's data, computed in pieces on the server (only digests are sent)."""
    pieces: dict[int, list[str]] = {}
    todo: list[int] | None = None
    offset = 0
    while todo is None or todo:
        rows = conn.execute(
            "SELECT m.oid::bigint, md5(p.data), length(p.data) FROM pg_largeobject_metadata m "
            "CROSS JOIN LATERAL (SELECT lo_get(m.oid, %s, %s) AS data) p "
            "WHERE %s::oid[] IS NULL OR m.oid = ANY(%s::oid[])",
            (offset, LO_PIECE, todo, todo)).fetchall()
        todo = []
        for oid, digest, length in rows:
            pieces.setdefault(int(oid), []).append(f"{digest}:{length}")
            if length == LO_PIECE:
                todo.append(int(oid))
        offset += LO_PIECE
    return {oid: hashlib.sha256("|".join(parts).encode()).hexdigest() for oid, parts in pieces.items()}


#: A large object's owner and its grants to roles other than the owner, as (grantee or PUBLIC, privilege, grantable).
ObjectRoles = tuple[str | None, tuple[tuple[str, str, bool], ...]]

_LO_ROLES = """
    SELECT m.oid::bigint, pg_get_userbyid(m.lomowner),
           coalesce((SELECT json_agg(json_build_array(CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                                          ELSE pg_get_userbyid(a.grantee) END,
                                                     a.privilege_type, a.is_grantable))
                       FROM aclexplode(m.lomacl) a WHERE a.grantee <> m.lomowner), '[]'::json)
      FROM pg_largeobject_metadata m
"""
_LO_PRIVILEGES = frozenset({"SELECT", "UPDATE"})


def large_object_roles(conn: psycopg.Connection) -> dict[int, ObjectRoles]:
    """oid -> (owner, grants) of every large object on ``conn``'s side."""
    return {int(oid): (str(owner), tuple(sorted((str(g), str(p), bool(o)) for g, p, o in grants)))
            for oid, owner, grants in conn.execute(_LO_ROLES).fetchall()}


@dataclass(frozen=True)
class LargeObjectRoles:
    """How large objects' owners and grants are carried: as the schema step carries every other object's (owners
    with ``owner_mapping``, grants with ``migrate_grants``), onto roles that exist on the destination."""

    owner_mapping: dict[str, str]
    grants: bool

    @classmethod
    def of(cls, config: MigrationConfig) -> LargeObjectRoles | None:
        """None when the migration carries neither owners nor grants (objects belong to its account)."""
        settings = config.schema_migration
        if not settings.owner_mapping and not settings.migrate_grants:
            return None
        return cls(dict(settings.owner_mapping), settings.migrate_grants)

    def expected(self, source: dict[int, ObjectRoles], dst: psycopg.Connection) -> dict[int, ObjectRoles]:
        """What each object's owner and grants should be on the destination (owner None: not carried)."""
        from airflow_pgmigrate.engine.schema import RoleMapper

        existing = {str(r[0]) for r in dst.execute("SELECT rolname FROM pg_roles").fetchall()}
        roles = RoleMapper(self.owner_mapping, existing, self.grants)
        out: dict[int, ObjectRoles] = {}
        for oid, (owner, grants) in source.items():
            target = roles.target(owner) if self.owner_mapping and owner else None
            mapped = [("PUBLIC" if g == "PUBLIC" else roles.target(g), p, o) for g, p, o in grants] if self.grants \
                else []
            out[oid] = (target, tuple(sorted((str(g), p, o) for g, p, o in mapped if g is not None)))
        return out

    def differ(self, expected: ObjectRoles | None, actual: ObjectRoles | None) -> bool:
        """Whether the destination's owner or grants differ from those expected (what is not carried is ignored)."""
        if expected is None or actual is None:
            return False
        return (expected[0] is not None and expected[0] != actual[0]) or (self.grants and expected[1] != actual[1])

    def differing(self, src: psycopg.Connection, dst: psycopg.Connection) -> tuple[dict[int, ObjectRoles], list[int]]:
        """(expected owner and grants per object, the objects whose owner or grants differ on the destination)."""
        expected = self.expected(large_object_roles(src), dst)
        actual = large_object_roles(dst)
        return expected, sorted(oid for oid in expected if self.differ(expected[oid], actual.get(oid)))


def give_large_object(dst: psycopg.Connection, oid: int, roles: ObjectRoles | None) -> None:
    """Set a freshly created destination object's owner and grants (``roles`` from LargeObjectRoles.expected)."""
    if roles is None:
        return
    owner, grants = roles
    if owner is not None:
        dst.execute(sql.SQL("ALTER LARGE OBJECT {} OWNER TO {}").format(sql.Literal(oid), sql.Identifier(owner)))
    for grantee, privilege, grantable in grants:
        if privilege not in _LO_PRIVILEGES:
            continue
        dst.execute(sql.SQL("GRANT {} ON LARGE OBJECT {} TO {}{}").format(
            sql.SQL(privilege), sql.Literal(oid), sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def _copy_rest(src: psycopg.Connection, dst: psycopg.Connection, oid: int, offset: int,
               on_bytes: Callable[[int], Any] | None) -> None:
    """Copy an object's data from ``offset`` on, a piece at a time (objects larger than their first piece)."""
    while True:
        row = src.execute("SELECT lo_get(%s, %s, %s)", (oid, offset, LO_PIECE)).fetchone()
        piece = bytes(row[0]) if row and row[0] is not None else b""
        if not piece:
            return
        if on_bytes is not None:
            on_bytes(len(piece))
        dst.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, piece))
        offset += len(piece)


def copy_large_objects(src: psycopg.Connection, dst: psycopg.Connection, oids: list[int],
                       on_bytes: Callable[[int], Any] | None = None,
                       roles: dict[int, ObjectRoles] | None = None) -> None:
    """Create (or replace) these objects on the destination with the source's data (and ``roles``' owner and
    grants), ``LO_BATCH`` objects per destination transaction: their first pieces in one round trip each way, the
    rest of a larger object piece by piece."""
    for start in range(0, len(oids), LO_BATCH):
        batch = oids[start:start + LO_BATCH]
        first = [(int(oid), bytes(data)) for oid, data in src.execute(
            "SELECT o::bigint, lo_get(o, 0, %s) FROM unnest(%s::oid[]) AS o", (LO_PIECE, batch)).fetchall()]
        with dst.transaction():
            dst.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = ANY(%s::oid[])", (batch,))
            dst.execute("SELECT lo_from_bytea(o, d) FROM unnest(%s::oid[], %s::bytea[]) AS t(o, d)",
                        ([oid for oid, _ in first], [data for _, data in first]))
            for oid, data in first:
                if on_bytes is not None:
                    on_bytes(len(data))
                if len(data) == LO_PIECE:
                    _copy_rest(src, dst, oid, LO_PIECE, on_bytes)
                give_large_object(dst, oid, (roles or {}).get(oid))


def sync_large_objects(src: psycopg.Connection, dst: psycopg.Connection, *, compare_first: bool = True,
                       on_bytes: Callable[[int], Any] | None = None,
                       roles: LargeObjectRoles | None = None) -> dict[str, int]:
    """Make the destination's large objects those of ``src``: copy the new and changed ones (data, or owner and
    grants when ``roles`` carries them), unlink the ones gone. ``compare_first=False`` copies every source object
    without digesting (the full load into an empty database)."""
    expected, wrong_roles = roles.differing(src, dst) if roles is not None else ({}, [])
    if compare_first:
        here, there = large_object_digests(src), large_object_digests(dst)
        copy = sorted({oid for oid, digest in here.items() if there.get(oid) != digest} | set(wrong_roles))
        gone = sorted(oid for oid in there if oid not in here)
    else:
        copy = [int(r[0]) for r in src.execute("SELECT oid::bigint FROM pg_largeobject_metadata ORDER BY oid")]
        gone = []
    copy_large_objects(src, dst, copy, on_bytes, expected)
    if gone:
        with dst.transaction():
            dst.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = ANY(%s::oid[])", (gone,))
    return {"copied": len(copy), "removed": len(gone)}


def compare_large_objects(src: psycopg.Connection, dst: psycopg.Connection,
                          roles: LargeObjectRoles | None = None) -> dict[str, Any]:
    """Count and per-object digests of both sides (and owners and grants when ``roles`` carries them); names (oids)
    what is missing, extra, different (data) or differently owned or granted (``other_roles``)."""
    here, there = large_object_digests(src), large_object_digests(dst)
    missing = sorted(oid for oid in here if oid not in there)
    extra = sorted(oid for oid in there if oid not in here)
    different = sorted(oid for oid in here if oid in there and here[oid] != there[oid])
    other_roles = [oid for oid in roles.differing(src, dst)[1] if oid in there] if roles is not None else []
    return {"source_count": len(here), "destination_count": len(there),
            "missing_count": len(missing), "extra_count": len(extra), "different_count": len(different),
            "other_roles_count": len(other_roles), "missing": missing[:MAX_NAMED], "extra": extra[:MAX_NAMED],
            "different": different[:MAX_NAMED], "other_roles": other_roles[:MAX_NAMED],
            "equal": not (missing or extra or different or other_roles)}


# -- from a source to a destination ----------------------------------------------------------------------------


@contextmanager
def source_snapshot(source: ConnectionInfo, snapshot: str | None) -> Iterator[psycopg.Connection]:
    """A read-only repeatable-read transaction on the source, in the exported ``snapshot`` when given one."""
    with connect(source, autocommit=False) as src:
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        src.read_only = True
        if snapshot is not None:
            src.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        try:
            yield src
        finally:
            src.rollback()


def sequences_of(config: MigrationConfig, source: ConnectionInfo, snapshot: str | None = None) -> list[SequenceState]:
    """Every migrated sequence's state on the source. Sequences are not transactional: in ``snapshot`` too, each
    shows its value at the time of reading, at or beyond its value at the snapshot."""
    with source_snapshot(source, snapshot) as src:
        return read_sequences(config, src)


def sync_sequences(config: MigrationConfig, source: ConnectionInfo, destination: ConnectionInfo, *,
                   snapshot: str | None = None, offset: int = 0, states: list[SequenceState] | None = None,
                   log: Log = _quiet) -> list[dict[str, Any]]:
    """Set every migrated sequence on the destination from the source (+ ``offset``), from ``states`` when the
    caller read them already; returns what was set."""
    if states is None:
        states = sequences_of(config, source, snapshot)
    with connect(destination) as dst:
        out = apply_sequences(dst, states, offset)
    missing = [e["sequence"] for e in out if e.get("missing")]
    log(f"sequences set count={len(out) - len(missing)} offset={offset}")
    if missing:
        log(f"sequences warning: not on the destination (verification reports them): {', '.join(missing)}")
    short = [e["sequence"] for e in out if e.get("offset_cut_short")]
    if short:
        log(f"sequences warning: the offset of {offset} does not fit below MAXVALUE (above MINVALUE for a descending "
            f"sequence), set at the bound: {', '.join(short)}; raise the bound on the destination "
            "(ALTER SEQUENCE ... MAXVALUE ...) or the next values run out")
    return out


def sync_large_objects_between(source: ConnectionInfo, destination: ConnectionInfo, *, snapshot: str | None = None,
                               compare_first: bool = True, on_bytes: Callable[[int], Any] | None = None,
                               roles: LargeObjectRoles | None = None, log: Log = _quiet) -> dict[str, int]:
    """Bring the source's large objects (in ``snapshot`` when given) to the destination, with their owners and
    grants when ``roles`` carries them."""
    with source_snapshot(source, snapshot) as src, connect(destination) as dst:
        result = sync_large_objects(src, dst, compare_first=compare_first, on_bytes=on_bytes, roles=roles)
    log(f"large_objects copied={result['copied']} removed={result['removed']}")
    return result


def compare_state(config: MigrationConfig, src: psycopg.Connection, dst: psycopg.Connection,
                  schema: SourceSchema | None = None, sequences: list[SequenceState] | None = None) -> dict[str, Any]:
    """Sequences and large objects of both sides, ``src`` in whatever snapshot its transaction holds; the
    sequences against ``sequences`` when given (the source's states the destination was set from at a snapshot:
    read again later, a sequence a running load advances would look behind)."""
    if sequences is None:
        sequences = read_sequences(config, src, schema)
    return {"sequences": compare_sequences(sequences, dst),
            "large_objects": compare_large_objects(src, dst, LargeObjectRoles.of(config))}


__all__ = [
    "LargeObjectRoles",
    "SequenceState",
    "apply_sequences",
    "compare_large_objects",
    "compare_sequences",
    "compare_state",
    "copy_large_objects",
    "give_large_object",
    "large_object_roles",
    "large_object_digests",
    "migrated_sequences",
    "read_sequences",
    "sequences_of",
    "source_snapshot",
    "sync_large_objects",
    "sync_large_objects_between",
    "sync_sequences",
]
