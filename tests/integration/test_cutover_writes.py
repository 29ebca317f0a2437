"""A cutover releases the slot only once it has seen that writes stopped: the freeze makes new write sessions
impossible (prepared transactions refuse it, CONNECT is revoked, sessions are ended, and the unfreeze restores exactly
what it changed), and without a freeze, changes that keep arriving after the drain stop the cutover."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from airflow_pgmigrate.config import MigrationConfig
from airflow_pgmigrate.engine.cutover import CutoverError, run_cutover
from airflow_pgmigrate.engine.freeze import FreezeError, freeze_source, unfreeze_source
from airflow_pgmigrate.engine.state import MigrationState
from airflow_pgmigrate.exceptions import ConfigError
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = pytest.mark.integration

APP_ROLE, APP_PASSWORD = "pgm_app_writer", "app-writer-pw"
TABLE = ("CREATE TABLE public.orders (id bigserial PRIMARY KEY, amount int NOT NULL, note text);"
         "INSERT INTO public.orders (amount) SELECT g FROM generate_series(1, 200) g")


def _app(env):
    """An application role that writes the table, connected through PUBLIC's CONNECT like most applications."""
    env.create_role(env.source, APP_ROLE, APP_PASSWORD)
    env.src(f"GRANT ALL ON public.orders TO {APP_ROLE}; GRANT ALL ON SEQUENCE public.orders_id_seq TO {APP_ROLE}")
    return env.source.info(env.source_db, APP_ROLE, APP_PASSWORD)


class Writer(threading.Thread):
    """Writes one row at a time with ``BEGIN READ WRITE`` (which a read-only default does not stop), reconnecting
    whenever its session is ended, until told to stop. Counts the rows whose commit succeeded."""

    def __init__(self, info, name: str) -> None:
        super().__init__(daemon=True)
        self.info, self.name_ = info, name
        self.committed = 0
        self.refused: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                with psycopg.connect(**{**self.info.connect_kwargs(), "application_name": self.name_},
                                     autocommit=True) as conn:
                    while not self.halt.is_set():
                        conn.execute("BEGIN READ WRITE")
                        conn.execute("INSERT INTO public.orders (amount, note) VALUES (1, %s)", (self.name_,))
                        conn.execute("COMMIT")
                        self.committed += 1
                        time.sleep(0.05)
            except psycopg.Error as exc:
                self.refused.append(str(exc).strip().splitlines()[0])
                time.sleep(0.1)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


def _rows(run, note: str) -> int:
    return run("SELECT count(*) FROM public.orders WHERE note = %s", (note,))[0][0]


def _slot_kept(env, config) -> bool:
    return env.src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (config.slot_name,)) == [(1,)]


def _frozen_settings(env) -> list[tuple]:
    return env.source.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
        "WHERE d.datname = %s", "postgres", (env.source_db,))


def test_freeze_refuses_while_a_prepared_transaction_exists_and_can_wait_for_it(migration_env):
    env = migration_env
    env.src(TABLE)
    config = start_migration(env, cutover={"freeze_source": True, "writes_stopped_check_seconds": 1})
    catch_up(env, config)
    with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO public.orders (amount, note) VALUES (7, 'prepared')")
        conn.execute("PREPARE TRANSACTION 'pgm_invoice_42'")
    try:
        with pytest.raises(CutoverError) as info:
            run_cutover(config, env.source_info(), env.destination_info())
        message = str(info.value)
        assert "'pgm_invoice_42' (owner postgres, prepared" in message and "COMMIT PREPARED" in message, message
        assert _slot_kept(env, config)
        assert _frozen_settings(env) == [], "nothing of the freeze was left behind"
        assert env.src("SELECT has_database_privilege('public', current_database(), 'CONNECT')") == [(True,)]

        # With a wait, the cutover goes on once the transaction manager commits it, and the row arrives.
        threading.Timer(2.0, lambda: env.src("COMMIT PREPARED 'pgm_invoice_42'")).start()
        config = env.config(cutover={"freeze_source": True, "prepared_transactions_wait_seconds": 30,
                                     "writes_stopped_check_seconds": 1})
        report = run_cutover(config, env.source_info(), env.destination_info())
    finally:
        env.source.execute("ROLLBACK PREPARED 'pgm_invoice_42'", env.source_db) if env.src(
            "SELECT count(*) FROM pg_prepared_xacts")[0][0] else None
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert _rows(env.dst, "prepared") == 1


def test_freeze_makes_new_write_sessions_impossible_and_the_unfreeze_restores_them(migration_env):
    env = migration_env
    env.src(TABLE)
    app = _app(env)
    env.create_role(env.source, "pgm_dba", "dba-pw", "SUPERUSER")
    config = start_migration(env, cutover={"freeze_source": True, "writes_stopped_check_seconds": 1})
    catch_up(env, config)
    writer = Writer(app, "app-during-cutover")
    writer.start()
    try:
        while writer.committed < 5:
            time.sleep(0.05)
        report = run_cutover(config, env.source_info(), env.destination_info())
        time.sleep(1.5)  # the writer keeps trying to reconnect and write
    finally:
        writer.stop()
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert report["freeze"]["sessions_ended"] >= 1
    assert "PUBLIC" in report["freeze"]["revoked_connect_from"]
    assert "pgm_dba (superuser)" in report["freeze"]["can_still_connect"], "the report names who still can"
    assert any("permission denied for database" in r for r in writer.refused), writer.refused
    # Every row the application managed to commit is on the destination: nothing was written after the freeze.
    assert _rows(env.src, "app-during-cutover") == writer.committed == _rows(env.dst, "app-during-cutover")

    # The report's rollback statements restore exactly what the freeze changed.
    (unfreeze,) = [s for s in report["next_steps"] if "unfreeze" in s]
    statements = unfreeze.split(": ", 1)[1]
    assert "GRANT CONNECT ON DATABASE" in statements and "RESET default_transaction_read_only" in statements
    env.src(statements)
    assert _frozen_settings(env) == []
    with psycopg.connect(**app.connect_kwargs(), autocommit=True) as conn:
        conn.execute("INSERT INTO public.orders (amount, note) VALUES (1, 'after rollback')")


def test_a_superuser_writing_after_the_freeze_stops_the_cutover_before_the_release(migration_env):
    """What the freeze cannot prevent (a superuser connects and turns read-only off) the cutover still sees."""
    env = migration_env
    env.src(TABLE)
    env.create_role(env.source, "pgm_dba", "dba-pw", "SUPERUSER")
    config = start_migration(env, cutover={"freeze_source": True, "writes_stopped_check_seconds": 3})
    catch_up(env, config)
    dba = env.source.info(env.source_db, "pgm_dba", "dba-pw")
    writer = Writer(dba, "dba-console")
    starter = threading.Thread(target=lambda: (_wait_frozen(env), time.sleep(1.0), writer.start()), daemon=True)
    starter.start()
    try:
        with pytest.raises(CutoverError) as info:
            run_cutover(config, env.source_info(), env.destination_info())
    finally:
        starter.join(10)
        writer.stop()
    message = str(info.value)
    assert "row change(s) to migrated tables arrived after the drain" in message, message
    assert "application 'dba-console', user pgm_dba" in message and "superuser session" in message, message
    assert _slot_kept(env, config)
    report = run_cutover(config, env.source_info(), env.destination_info())
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert _rows(env.src, "dba-console") == writer.committed == _rows(env.dst, "dba-console") > 0


def _wait_frozen(env) -> None:
    deadline = time.monotonic() + 30
    while not _frozen_settings(env) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_unfrozen_cutover_does_not_release_while_writes_keep_arriving(migration_env):
    env = migration_env
    env.src(TABLE)
    config = start_migration(env, cutover={"writes_stopped_check_seconds": 2})
    catch_up(env, config)
    writer = Writer(env.source_info(), "late-writer")
    writer.start()
    try:
        while writer.committed < 5:
            time.sleep(0.05)
        with pytest.raises(CutoverError) as info:
            run_cutover(config, env.source_info(), env.destination_info())
    finally:
        writer.stop()
    message = str(info.value)
    assert "row change(s) to migrated tables arrived after the drain" in message, message
    assert "application 'late-writer', user postgres, from 127.0.0.1" in message, message
    report = info.value.report
    assert report["late_changes"] > 0 and report["status"] == "stopped: the source is still being written"
    assert _slot_kept(env, config), "the slot is kept: nothing is lost"

    # Once the writes stopped, the cutover goes through and every row is there.
    report = run_cutover(config, env.source_info(), env.destination_info())
    assert report["status"] == "completed" and report["verification"]["equal"] is True
    assert _rows(env.src, "late-writer") == writer.committed == _rows(env.dst, "late-writer")


def test_automatic_approval_without_a_freeze_is_refused_by_config_validation():
    with pytest.raises(ConfigError) as info:
        MigrationConfig.from_dict({"name": "m", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"},
                                   "cutover": {"approval": "automatic"}})
    assert "cutover.approval" in str(info.value) and "freeze_source" in str(info.value)


def test_a_freeze_that_cannot_take_hold_is_undone_exactly(migration_env):
    """A source account that owns the database but is no superuser (as on Amazon RDS) cannot end a superuser's
    session: the freeze refuses, names the session, and leaves the database exactly as it was; once the session is
    gone it freezes, and the unfreeze restores the grants and the setting."""
    env = migration_env
    env.src(TABLE)
    app = _app(env)
    env.create_role(env.source, "pgm_owner", "owner-pw")
    env.source.execute(f'ALTER DATABASE "{env.source_db}" OWNER TO pgm_owner; GRANT pg_signal_backend TO pgm_owner')
    env.source.execute(f'ALTER DATABASE "{env.source_db}" SET default_transaction_read_only = off')
    owner = env.source.info(env.source_db, "pgm_owner", "owner-pw")
    state = MigrationState(env.destination_info(), "pgmigrate", "tfreeze")
    before = _frozen_settings(env)
    with psycopg.connect(**{**env.source_info().connect_kwargs(), "application_name": "dba-psql"}):
        with pytest.raises(FreezeError) as info:
            freeze_source(owner, state)
    assert "user postgres, address not shown" in str(info.value) and "could not be ended" in str(info.value), info.value
    assert _frozen_settings(env) == before == [(["default_transaction_read_only=off"],)]
    assert env.src("SELECT has_database_privilege('public', current_database(), 'CONNECT')") == [(True,)]

    frozen = freeze_source(owner, state)
    assert frozen["revoked_connect_from"] == ["PUBLIC"] and frozen["granted_connect_to"] == []
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(**app.connect_kwargs())
    assert unfreeze_source(owner, state) == frozen["unfreeze"]
    assert _frozen_settings(env) == before
    with psycopg.connect(**app.connect_kwargs(), autocommit=True) as conn:
        conn.execute("INSERT INTO public.orders (amount, note) VALUES (1, 'after unfreeze')")


def test_automatic_approval_without_a_freeze_is_accepted_where_there_is_no_cutover():
    config = MigrationConfig.from_dict({"name": "m", "source": {"conn_id": "a"}, "destination": {"conn_id": "b"},
                                        "migration_types": ["schema", "full"], "cutover": {"approval": "automatic"}})
    assert config.cutover.freeze_source is False


class _StateLostAfterRevoke(MigrationState):
    """Migration state whose first write of the freeze record after PUBLIC lost CONNECT on the source fails, as when
    the destination (where the state lives) drops the connection right after the revoke."""

    def __init__(self, env, *args) -> None:
        super().__init__(*args)
        self.env, self.failed = env, False

    def put(self, key, value) -> None:
        if key == "source_freeze" and not self.failed and self.env.src(
                "SELECT has_database_privilege('public', current_database(), 'CONNECT')") == [(False,)]:
            self.failed = True
            raise psycopg.OperationalError("connection to the destination lost")
        super().put(key, value)


def test_a_freeze_interrupted_after_the_revoke_is_undone_exactly(migration_env):
    """The revocations are recorded before they are made: whatever interrupts the freeze after the revoke, its undo
    gives PUBLIC its CONNECT back (the application can connect again)."""
    env = migration_env
    env.src(TABLE)
    app = _app(env)
    state = _StateLostAfterRevoke(env, env.destination_info(), "pgmigrate", "tfreeze_lost")
    try:
        freeze_source(env.source_info(), state)
    except psycopg.OperationalError:
        pass  # the freeze undid itself (or tried to)
    unfreeze_source(env.source_info(), MigrationState(env.destination_info(), "pgmigrate", "tfreeze_lost"))
    assert _frozen_settings(env) == []
    assert env.src("SELECT has_database_privilege('public', current_database(), 'CONNECT')") == [(True,)]
    with psycopg.connect(**app.connect_kwargs(), autocommit=True) as conn:
        conn.execute("INSERT INTO public.orders (amount, note) VALUES (1, 'after undo')")


def _connect_rights(env) -> list[tuple]:
    return env.src("SELECT r, has_database_privilege(r, current_database(), 'CONNECT'), "
                   "has_database_privilege(r, current_database(), 'CONNECT WITH GRANT OPTION') "
                   "FROM unnest(ARRAY['public', 'pgm_owner', 'pgm_mig', 'pgm_delegate', 'pgm_app_writer']) r "
                   "ORDER BY 1")


def test_freeze_by_a_member_of_the_owner_connecting_through_public_is_undone_exactly(migration_env):
    """The source account is no superuser and not the owner but a member of the owning role, with CONNECT through
    PUBLIC only; another role holds CONNECT with grant option. The freeze lets the account (and only it) in, the
    unfreeze gives every role back exactly the rights it had, twice in a row."""
    env = migration_env
    env.src(TABLE)
    app = _app(env)
    env.create_role(env.source, "pgm_owner", "owner-pw")
    env.create_role(env.source, "pgm_mig", "mig-pw")
    env.create_role(env.source, "pgm_delegate", "delegate-pw")
    env.source.execute(f'ALTER DATABASE "{env.source_db}" OWNER TO pgm_owner; GRANT pgm_owner TO pgm_mig; '
                       f'GRANT pg_signal_backend TO pgm_mig; '
                       f'GRANT CONNECT ON DATABASE "{env.source_db}" TO pgm_delegate WITH GRANT OPTION')
    mig = env.source.info(env.source_db, "pgm_mig", "mig-pw")
    before = _connect_rights(env)
    state = MigrationState(env.destination_info(), "pgmigrate", "tfreeze_member")
    for _ in range(2):
        frozen = freeze_source(mig, state)
        assert sorted(frozen["revoked_connect_from"]) == ["PUBLIC", "pgm_delegate", "pgm_owner"], frozen
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            psycopg.connect(**app.connect_kwargs())
        with psycopg.connect(**mig.connect_kwargs()) as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        unfreeze_source(mig, state)
        assert _connect_rights(env) == before
        assert _frozen_settings(env) == []
    with psycopg.connect(**app.connect_kwargs(), autocommit=True) as conn:
        conn.execute("INSERT INTO public.orders (amount, note) VALUES (1, 'after unfreeze')")


def test_unfreeze_keeps_a_grant_option_held_through_a_second_grantor(migration_env):
    """A role holding CONNECT twice (from the owner, and with grant option from a delegate) keeps its grant option
    through a freeze and its undo."""
    env = migration_env
    env.src(TABLE)
    for role in ("pgm_owner", "pgm_mig", "pgm_delegate", APP_ROLE):
        env.create_role(env.source, role, "pw")
    db = f'"{env.source_db}"'
    env.source.execute(f"ALTER DATABASE {db} OWNER TO pgm_owner; GRANT pgm_owner TO pgm_mig; "
                       f"GRANT pg_signal_backend TO pgm_mig; SET ROLE pgm_owner; "
                       f"GRANT CONNECT ON DATABASE {db} TO pgm_delegate WITH GRANT OPTION; SET ROLE pgm_delegate; "
                       f"GRANT CONNECT ON DATABASE {db} TO {APP_ROLE} WITH GRANT OPTION; SET ROLE pgm_owner; "
                       f"GRANT CONNECT ON DATABASE {db} TO {APP_ROLE}; RESET ROLE")
    before = _connect_rights(env)
    assert (APP_ROLE, True, True) in before
    mig = env.source.info(env.source_db, "pgm_mig", "pw")
    state = MigrationState(env.destination_info(), "pgmigrate", "tfreeze_option")
    freeze_source(mig, state)
    unfreeze_source(mig, state)
    assert _connect_rights(env) == before


def test_unfrozen_cutover_does_not_release_while_a_prepared_transaction_waits(migration_env):
    """Without a freeze, a transaction prepared on the source (a transaction manager's) would commit after the slot
    is gone and its rows never reach the destination: the cutover stops before the release and names it."""
    env = migration_env
    env.src(TABLE)
    config = start_migration(env, cutover={"writes_stopped_check_seconds": 1})
    catch_up(env, config)
    with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO public.orders (amount, note) VALUES (7, 'prepared')")
        conn.execute("PREPARE TRANSACTION 'pgm_xa_7'")
    outcome: list = []

    def cutover() -> None:
        try:
            outcome.append(run_cutover(config, env.source_info(), env.destination_info()))
        except Exception as exc:  # noqa: BLE001 - examined below
            outcome.append(exc)

    worker = threading.Thread(target=cutover, daemon=True)
    worker.start()
    worker.join(60)
    hung = worker.is_alive()
    env.src("COMMIT PREPARED 'pgm_xa_7'")  # what the transaction manager does later (and what unblocks a hang)
    worker.join(60)
    assert not hung, "the cutover waited for the prepared transaction instead of naming it"
    assert outcome and isinstance(outcome[0], CutoverError), outcome
    assert "'pgm_xa_7'" in str(outcome[0]) and "COMMIT PREPARED" in str(outcome[0]), str(outcome[0])
    assert _slot_kept(env, config)
    report = run_cutover(config, env.source_info(), env.destination_info())
    assert report["status"] == "completed" and _rows(env.dst, "prepared") == 1
