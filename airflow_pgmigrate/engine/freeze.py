"""The source freeze of the cutover, and the checks that nothing but the migration writes to the source.

A freeze makes new write sessions impossible, not just discouraged:

1. Prepared transactions in the database block it (their ``COMMIT PREPARED`` would land after the slot is gone):
   it waits for them, up to ``cutover.prepared_transactions_wait_seconds``, else refuses and names them.
2. CONNECT on the database is revoked from PUBLIC and from every role but the migration's (granted to the
   migration's role first when it had it only through PUBLIC); the database is set
   ``default_transaction_read_only = on``; what was there before is recorded first (migration state key
   ``source_freeze``), so the unfreeze statements restore exactly what the freeze changed.
3. Every other session in the database is ended, again until none is left.
4. Quiet check: nothing prepared, no other session holds a transaction id.

What it cannot stop: a superuser connects whatever the privileges, and may ``SET default_transaction_read_only =
off``; a role that is a member of the migration's role connects with its privileges; replication connections
(walsenders, serving other replicas) are not ended. The roles are named in the report (``can_still_connect``); the
cutover checks again from the slot, right before it is released, that no change to a migrated table arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from airflow_pgmigrate.engine.connection import ConnectionInfo, connect
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.exceptions import PgMigrateError

#: Migration state key of the freeze record (what the freeze changed, to restore it).
STATE_KEY = "source_freeze"
#: Rounds of ending sessions (a session may have passed its privilege check just before the revoke).
END_ROUNDS = 10


class FreezeError(PgMigrateError):
    """The source could not be frozen; it was left (or put back) as it was."""


@dataclass
class Session:
    """A session on the source, as pg_stat_activity shows it."""

    pid: int
    user: str | None
    application: str
    client: str | None
    idle_seconds: float | None
    xid: str | None
    #: Details of another role's session are hidden from an account without pg_read_all_stats.
    hidden: bool = False

    def describe(self) -> str:
        where = f"from {self.client}" if self.client else \
            "address not shown to the migration's account" if self.hidden else "local socket"
        idle = f", last active {self.idle_seconds:.1f} s ago" if self.idle_seconds is not None else ""
        writing = ", in a transaction that writes" if self.xid else ""
        return f"application {self.application or '(none)'!r}, user {self.user}, {where} (pid {self.pid}{idle}{writing})"


def sessions(src: psycopg.Connection, *, writing_only: bool = False) -> list[Session]:
    """Other client sessions in the current database (not this one), most recently active first; with
    ``writing_only``, those holding a transaction id. Another role's session whose details are hidden (no
    pg_read_all_stats) counts as a client session."""
    rows = src.execute(
        "SELECT pid, usename, coalesce(application_name, ''), client_addr::text, "
        "extract(epoch FROM now() - state_change)::float8, backend_xid::text, backend_type IS NULL "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND coalesce(backend_type, 'client backend') = 'client backend' "
        "AND (NOT %s OR backend_xid IS NOT NULL) ORDER BY state_change DESC NULLS LAST", (writing_only,)).fetchall()
    return [Session(int(r[0]), r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]


def writers(src: psycopg.Connection, since_seconds: float, own_application: str) -> list[Session]:
    """Sessions that may have written lately: active within ``since_seconds`` or holding a transaction id, other
    than the migration's own (its application name)."""
    return [s for s in sessions(src) if s.application != own_application
            and (s.xid is not None or s.idle_seconds is None or s.idle_seconds <= since_seconds)]


def prepared_transactions(src: psycopg.Connection) -> list[str]:
    """The prepared transactions of the current database, in words (name, owner, age)."""
    rows = src.execute(
        "SELECT gid, owner, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts "
        "WHERE database = current_database() ORDER BY prepared").fetchall()
    return [f"{gid!r} (owner {owner}, prepared {age:.0f} s ago)" for gid, owner, age in rows]


def _wait_for_prepared(src: psycopg.Connection, wait_seconds: int, log: Callable[[str], None]) -> None:
    deadline = time.monotonic() + wait_seconds
    while prepared := prepared_transactions(src):
        if time.monotonic() >= deadline:
            raise FreezeError(
                f"the source database holds {len(prepared)} prepared transaction(s): {', '.join(prepared)}. Their "
                "COMMIT PREPARED would write after the freeze and be lost, so the cutover did not freeze the source. "
                "Have their owner (or the transaction manager) COMMIT PREPARED or ROLLBACK PREPARED them, or set "
                "cutover.prepared_transactions_wait_seconds to wait for them, then run the cutover again")
        log(f"cutover waiting for prepared transactions: {', '.join(prepared)}")
        time.sleep(1)


def _connect_grants(src: psycopg.Connection) -> list[tuple[str, bool]]:
    """Who holds CONNECT on the current database (grantee or PUBLIC, with grant option)."""
    rows = src.execute(
        "SELECT coalesce(r.rolname, 'PUBLIC'), a.is_grantable FROM pg_database d "
        "CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
        "LEFT JOIN pg_roles r ON r.oid = a.grantee "
        "WHERE d.datname = current_database() AND a.privilege_type = 'CONNECT' ORDER BY 1").fetchall()
    return [(str(r[0]), bool(r[1])) for r in rows]


def _read_only_setting(src: psycopg.Connection) -> str | None:
    row = src.execute(
        "SELECT split_part(c, '=', 2) FROM pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) c "
        "WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND s.setrole = 0 AND c LIKE 'default_transaction_read_only=%'").fetchone()
    return None if row is None else str(row[0])


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "PUBLIC" else sql.Identifier(name)


def _record(src: psycopg.Connection, dbname: str) -> dict[str, Any]:
    """What the freeze is about to change, read before it changes anything."""
    row = src.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row is not None
    return {"database": dbname, "role": row[0], "superuser": bool(row[1]),
            "read_only_setting": _read_only_setting(src), "revoked": [], "granted": []}


def _plan(src: psycopg.Connection, record: dict[str, Any]) -> None:
    """Add to ``record`` what the freeze is about to revoke and grant, before it does: an interruption after the revoke
    (a crash, the state's database gone) still finds every revocation in the record, so the undo restores it."""
    me = record["role"]
    grants = _connect_grants(src)
    if not record["superuser"] and not any(g == me for g, _ in grants) and me not in record["granted"]:
        record["granted"].append(me)
    for grantee, grant_option in grants:
        if grantee == me:
            continue
        entry = next((r for r in record["revoked"] if r["grantee"] == grantee), None)
        if entry is None:
            record["revoked"].append({"grantee": grantee, "grant_option": grant_option})
        else:  # held from several grantors: the grant option of any of them is restored
            entry["grant_option"] = entry["grant_option"] or grant_option


def _apply(src: psycopg.Connection, record: dict[str, Any]) -> None:
    """Revoke CONNECT from everyone but the migration's role and set the database read-only, in one transaction, as
    :func:`_plan` recorded."""
    db = sql.Identifier(record["database"])
    me = record["role"]
    grants = _connect_grants(src)
    with src.transaction():
        if me in record["granted"] and not any(g == me for g, _ in grants):
            src.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(me)))
        for grantee, _ in grants:
            if grantee != me:
                src.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {} CASCADE").format(db, _grantee(grantee)))
        src.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(db))
    left = [g for g, _ in _connect_grants(src) if g != me]
    if left:
        raise FreezeError(f"CONNECT on database {record['database']} could not be revoked from {', '.join(left)} "
                          f"(granted by another role): the source account {me!r} needs to own the database")


def unfreeze_statements(record: dict[str, Any]) -> list[str]:
    """The statements that restore exactly what the freeze changed."""
    db = sql.Identifier(record["database"])
    setting = record.get("read_only_setting")
    statements = [
        sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only;").format(db) if setting is None else
        sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {};").format(db, sql.Literal(setting))]
    for entry in record.get("revoked", []):
        statements.append(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}{};").format(
            db, _grantee(entry["grantee"]), sql.SQL(" WITH GRANT OPTION" if entry["grant_option"] else "")))
    for role in record.get("granted", []):
        statements.append(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {};").format(db, sql.Identifier(role)))
    return [s.as_string(None) for s in statements]


def unfreeze_source(source: ConnectionInfo, state: MigrationState,
                    log: Callable[[str], None] = lambda message: None) -> list[str]:
    """Undo the recorded freeze (when the cutover refuses to go on); returns the statements run."""
    record = state.get(STATE_KEY)
    if not record or record.get("status") == "restored":
        return []
    statements = unfreeze_statements(record)
    with connect(source) as src:
        src.execute("SET default_transaction_read_only = off")
        with src.transaction():
            for statement in statements:
                src.execute(statement.encode())  # built by unfreeze_statements from identifiers and literals
    state.put(STATE_KEY, {**record, "status": "restored"})
    log(f"cutover unfroze source database={record['database']}")
    return statements


def _end_sessions(src: psycopg.Connection, me: str) -> tuple[int, list[Session]]:
    """End every other client session in the database, round after round, until none is left; returns how many
    were ended and those left: the ones that could not be ended (another superuser's, for an account that is not
    one) and other roles' that keep connecting. The migration's own role may connect again (a sensor's poke)."""
    ended: set[int] = set()
    refused: dict[int, Session] = {}
    for _ in range(END_ROUNDS):
        left = [s for s in sessions(src) if s.pid not in refused]
        if not left:
            break
        for session in left:
            try:
                row = src.execute("SELECT pg_terminate_backend(%s)", (session.pid,)).fetchone()
                if row and row[0]:
                    ended.add(session.pid)
            except psycopg.errors.InsufficientPrivilege:
                refused[session.pid] = session
        time.sleep(0.2)
    return len(ended), list(refused.values()) + [s for s in sessions(src) if s.pid not in refused and s.user != me]


def quiet_problems(src: psycopg.Connection) -> list[str]:
    """What shows that something besides the migration may write: prepared transactions, other sessions holding a
    transaction id. Autovacuum (its own catalog updates) and replication connections (walsenders serve other
    replicas and are not ended; a write through one reaches the slot like any other) are left out here."""
    problems = [f"prepared transaction {p}" for p in prepared_transactions(src)]
    problems += [f"session {s.describe()}" for s in sessions(src, writing_only=True)]
    rows = src.execute(
        "SELECT backend_type, pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL "
        "AND backend_type NOT IN ('client backend', 'autovacuum worker', 'walsender')").fetchall()
    problems += [f"{kind} (pid {pid}) holding a transaction id" for kind, pid in rows]
    return problems


def can_still_connect(src: psycopg.Connection, me: str) -> list[str]:
    """Roles besides the migration's that can still connect: superusers, and members of roles that kept CONNECT."""
    rows = src.execute(
        "SELECT rolname, rolsuper FROM pg_roles WHERE rolcanlogin AND rolname <> %s AND (rolsuper OR "
        "has_database_privilege(oid, current_database(), 'CONNECT')) ORDER BY 1", (me,)).fetchall()
    return [f"{name} (superuser)" if superuser else f"{name} (member of a role that keeps CONNECT)"
            for name, superuser in rows]


def freeze_source(source: ConnectionInfo, state: MigrationState, *, wait_prepared_seconds: int = 0,
                  log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Freeze the source database (see the module's docstring); returns what the report shows of it. On a refusal
    the database is put back as it was and :class:`FreezeError` says why."""
    previous = state.get(STATE_KEY) or {}
    with connect(source) as src:
        src.execute("SET default_transaction_read_only = off")  # a retry finds the database frozen already
        _wait_for_prepared(src, wait_prepared_seconds, log)
        if previous.get("status") == "frozen" and previous.get("database") == source.dbname:
            record = previous  # a retry: what was there before the first freeze is what the unfreeze restores
        else:
            record = {**_record(src, source.dbname), "status": "frozen"}
        _plan(src, record)
        state.put(STATE_KEY, record)  # recorded before anything changes, so a crash midway can still be undone
        try:
            _apply(src, record)
            ended, left = _end_sessions(src, record["role"])
            problems = [f"session {s.describe()} could not be ended" for s in left] + quiet_problems(src)
            if problems:
                raise FreezeError("the source did not fall quiet after the freeze: " + "; ".join(problems)
                                  + ". The freeze was undone. End those sessions (or commit or roll back the "
                                  "prepared transactions), then run the cutover again")
            others = can_still_connect(src, record["role"])
        except BaseException:
            unfreeze_source(source, state, log)
            raise
    log(f"cutover froze source database={source.dbname} sessions_ended={ended} revoked_connect_from="
        f"{','.join(r['grantee'] for r in record['revoked']) or '-'} can_still_connect={','.join(others) or '-'}")
    return {"sessions_ended": ended, "revoked_connect_from": [r["grantee"] for r in record["revoked"]],
            "granted_connect_to": record["granted"], "can_still_connect": others,
            "unfreeze": unfreeze_statements(record)}


__all__ = ["FreezeError", "STATE_KEY", "Session", "can_still_connect", "freeze_source", "prepared_transactions",
           "quiet_problems", "sessions", "unfreeze_source", "unfreeze_statements", "writers"]
