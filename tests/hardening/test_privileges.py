"""Least privilege: the precheck names the exact GRANT / ALTER ROLE / publication statements missing for each
migration type, on each side, and running exactly those statements makes it pass.

The whole migration run by a source account with only REPLICATION and SELECT, and a destination account that owns
its database, is in test_security.py (it also searches that run for leaked passwords).
"""

from __future__ import annotations

import psycopg
import pytest

from airflow_pgmigrate.engine.full_load import run_full_load
from airflow_pgmigrate.engine.publication import PublicationError

pytestmark = [pytest.mark.integration, pytest.mark.hardening]

SOURCE = """
CREATE SCHEMA sales;
CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES public.customers (id));
CREATE TABLE sales.items (id int PRIMARY KEY, label text);
CREATE TABLE sales.audit (id int PRIMARY KEY);
INSERT INTO public.customers (name) VALUES ('a'), ('b');
INSERT INTO public.orders (customer_id) VALUES (1), (2);
INSERT INTO sales.items VALUES (1, 'x');
SELECT lo_from_bytea(515151, 'blob');
"""
SELECTED = {"tables": ["public.customers", "public.orders", "sales.items"]}
USER = "pgm_nobody"


def statements(fix: str) -> list[str]:
    """The SQL statements of a fix text (comment lines and trailing comments dropped)."""
    out = []
    for line in fix.splitlines():
        line = line.split("  --")[0].strip()
        if line and not line.startswith("--"):
            out.append(line)
    return out


def item(report, name: str, status: str):
    (found,) = [r for r in report.results if r.name == name and r.status == status]
    return found


def test_source_grants_per_migration_type(migration_env):
    env = migration_env
    env.src(SOURCE)
    env.create_role(env.source, USER, "nobody-pw")
    info = env.source_info(USER, "nobody-pw")
    db, name = env.source_db, env.config().name

    schema = item(env.precheck(source=info, migration_types=["schema"], objects=SELECTED), "source_privileges",
                  "failed")
    assert f'GRANT USAGE ON SCHEMA "sales" TO "{USER}";' in schema.fix
    # pg_dump locks every table of the schemas it dumps, selected or not.
    for table in ('"public"."customers"', '"public"."orders"', '"sales"."items"', '"sales"."audit"'):
        assert f'GRANT SELECT ON {table} TO "{USER}";' in schema.fix
    assert "SEQUENCE" not in schema.fix and "REPLICATION" not in schema.fix

    full = item(env.precheck(source=info, migration_types=["full"], objects=SELECTED), "source_privileges", "failed")
    assert f'GRANT SELECT ON SEQUENCE "public"."customers_id_seq" TO "{USER}";' in full.fix
    assert f'GRANT SELECT ON SEQUENCE "public"."orders_id_seq" TO "{USER}";' in full.fix
    assert f'GRANT SELECT ON LARGE OBJECT 515151 TO "{USER}";' in full.fix
    assert '"sales"."audit"' not in full.fix and "REPLICATION" not in full.fix

    incremental = item(env.precheck(source=info, migration_types=["full", "incremental"], objects=SELECTED,
                                    cutover={"freeze_source": True}), "source_privileges", "failed")
    assert f'ALTER ROLE "{USER}" REPLICATION;' in incremental.fix
    create = (f'CREATE PUBLICATION "pgmigrate_{name}" FOR TABLE "public"."customers", "public"."orders", '
              '"sales"."items";')
    assert create in incremental.fix and f"incremental.publication: pgmigrate_{name}" in incremental.fix
    assert f'GRANT CREATE ON DATABASE "{db}" TO "{USER}";' in incremental.fix
    assert 'GRANT "postgres" TO' not in incremental.fix, "membership in a superuser role is never suggested"
    assert f'GRANT pg_signal_backend TO "{USER}";' in incremental.fix
    assert f'ALTER DATABASE "{db}" OWNER TO "{USER}";' in incremental.fix

    # Exactly those statements, run by the owner, make the precheck pass (the publication named in the config).
    for statement in statements(incremental.fix) + statements(schema.fix):
        env.src(statement)
    report = env.precheck(source=info, objects=SELECTED, cutover={"freeze_source": True},
                          incremental={"publication": f"pgmigrate_{name}"})
    statuses = report.statuses()
    assert statuses["source_privileges"] == "passed" and statuses["publication"] == "passed", report.format_table()


def test_a_publication_given_by_the_owner_is_checked(migration_env):
    env = migration_env
    env.src(SOURCE)
    env.create_role(env.source, USER, "nobody-pw", "REPLICATION")
    env.src(f"GRANT USAGE ON SCHEMA sales TO {USER}; GRANT SELECT ON ALL TABLES IN SCHEMA public, sales TO {USER}; "
            f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {USER}; GRANT SELECT ON LARGE OBJECT 515151 TO {USER}")
    info = env.source_info(USER, "nobody-pw")
    options = {"objects": SELECTED, "incremental": {"publication": "app_pub"}}

    missing = item(env.precheck(source=info, **options), "publication", "failed")
    assert "publication app_pub does not exist" in missing.detail
    assert ('CREATE PUBLICATION "app_pub" FOR TABLE "public"."customers", "public"."orders", "sales"."items";'
            in missing.fix)

    env.src("CREATE PUBLICATION app_pub FOR TABLE public.customers WITH (publish = 'insert, update, delete')")
    partial = item(env.precheck(source=info, **options), "publication", "failed")
    assert partial.objects == ["public.orders", "sales.items"]
    assert 'ALTER PUBLICATION "app_pub" ADD TABLE "public"."orders", "sales"."items";' in partial.fix
    assert "ALTER PUBLICATION \"app_pub\" SET (publish = 'insert, update, delete, truncate');" in partial.fix
    # The full load refuses it before creating a slot, with the same statements.
    config = env.config(**options)
    with pytest.raises(PublicationError) as refused:
        run_full_load(config, info, env.destination_info())
    assert 'ALTER PUBLICATION "app_pub" ADD TABLE' in str(refused.value)
    assert env.src("SELECT count(*) FROM pg_replication_slots") == [(0,)]

    fix = partial.fix
    if env.source.major >= 15:  # row filters exist since PostgreSQL 15
        env.src("ALTER PUBLICATION app_pub SET TABLE public.customers WHERE (id > 1)")
        filtered = item(env.precheck(source=info, **options), "publication", "failed")
        assert "filters rows or columns of public.customers" in filtered.detail
        assert ('ALTER PUBLICATION "app_pub" DROP TABLE "public"."customers"; ALTER PUBLICATION "app_pub" ADD TABLE '
                '"public"."customers";') in filtered.fix
        fix = filtered.fix
    for statement in statements(fix):
        env.src(statement)
    report = env.precheck(source=info, **options)
    assert report.statuses()["publication"] == "passed", report.format_table()
    assert report.statuses()["source_privileges"] == "passed", report.format_table()


def test_destination_grants_for_a_non_superuser(migration_env):
    env = migration_env
    env.src(SOURCE + "CREATE EXTENSION pg_buffercache;")
    writer = "pgm_writer"
    env.create_role(env.destination, writer, "writer-pw")
    env.create_role(env.destination, "app_owner", "app-owner-pw")
    env.destination.execute(f'ALTER DATABASE "{env.destination_db}" OWNER TO {writer}')
    info = env.destination_info(writer, "writer-pw")

    schema = env.precheck(destination=info, objects=SELECTED,
                          schema_migration={"owner_mapping": {"postgres": "app_owner"}})
    failed = item(schema, "destination_privileges", "failed")
    assert f'GRANT "app_owner" TO "{writer}";' in failed.fix
    assert 'CREATE EXTENSION IF NOT EXISTS "pg_buffercache";' in failed.fix
    if env.destination.major >= 15:
        replica = item(schema, "destination_privileges", "warning")
        assert f'GRANT SET ON PARAMETER session_replication_role TO "{writer}";' in replica.fix

    # Incremental migration into tables someone else created: they (and their sequences) must be writable.
    env.dst("CREATE TABLE public.customers (id bigserial PRIMARY KEY, name text NOT NULL); "
            "CREATE TABLE public.orders (id bigserial PRIMARY KEY, customer_id bigint); "
            "CREATE SCHEMA sales; CREATE TABLE sales.items (id int PRIMARY KEY, label text); "
            f"GRANT USAGE ON SCHEMA sales TO {writer}")
    incremental = item(env.precheck(destination=info, objects=SELECTED, migration_types=["incremental"]),
                       "destination_privileges", "failed")
    assert (f'GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "public"."orders" TO "{writer}";'
            in incremental.fix)
    assert f'GRANT UPDATE ON SEQUENCE "public"."orders_id_seq" TO "{writer}";' in incremental.fix

    for statement in statements(failed.fix) + statements(incremental.fix):
        env.dst(statement)
    if env.destination.major >= 15:
        env.dst(replica.fix.split("  --")[0])
        env.cleanup.append(lambda: env.destination.execute(
            f"REVOKE SET ON PARAMETER session_replication_role FROM {writer}"))
    for report in (env.precheck(destination=info, objects=SELECTED,
                                schema_migration={"owner_mapping": {"postgres": "app_owner"}},
                                conflicting_tables="ignore"),
                   env.precheck(destination=info, objects=SELECTED, migration_types=["incremental"])):
        assert [r.status for r in report.results if r.name == "destination_privileges"] == ["passed"], \
            report.format_table()
    with psycopg.connect(**info.connect_kwargs(), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # the warning's grant works


def test_owner_publication_of_a_partitioned_table(migration_env):
    """The owner publishes the partitioned table itself (its partitions, present and future, follow): the
    least-privilege account migrates it, and rows routed to every partition arrive."""
    from airflow_pgmigrate.engine.incremental import release, run_incremental
    from airflow_pgmigrate.engine.schema import migrate_schema
    from airflow_pgmigrate.engine.state import MigrationState

    env = migration_env
    env.src("CREATE TABLE public.events (id bigint, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);"
            "CREATE TABLE public.events_2024 PARTITION OF public.events FOR VALUES FROM ('2024-01-01') TO "
            "('2025-01-01');"
            "CREATE TABLE public.events_2025 PARTITION OF public.events FOR VALUES FROM ('2025-01-01') TO "
            "('2026-01-01');"
            "INSERT INTO public.events SELECT g, date '2024-06-01' + g FROM generate_series(1, 300) g;"
            "CREATE PUBLICATION events_pub FOR TABLE public.events")
    env.create_role(env.source, USER, "nobody-pw", "REPLICATION")
    env.src(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {USER}")
    source = env.source_info(USER, "nobody-pw")
    report = env.precheck(source=source, objects={"tables": ["public.events"]},
                          incremental={"publication": "events_pub"})
    assert report.statuses()["publication"] == "passed", report.format_table()
    config = env.config(objects={"tables": ["public.events"]}, incremental={"publication": "events_pub"})
    destination = env.destination_info()
    state = MigrationState(destination, config.state_schema, config.name)
    migrate_schema(config, source, destination, "pre_data", state=state)
    run_full_load(config, source, destination)
    migrate_schema(config, source, destination, "post_data", state=state)
    env.src("INSERT INTO public.events SELECT g, date '2024-12-20' + g % 30 FROM generate_series(1001, 1100) g")
    for _ in range(10):
        if run_incremental(config, source, destination, window_seconds=10).caught_up:
            break
    query = "SELECT count(*), sum(id), count(DISTINCT tableoid) FROM public.events"
    assert env.dst(query) == env.src(query) == [(400, sum(range(1, 301)) + sum(range(1001, 1101)), 2)]
    assert release(config, source) == {"slot": True, "publication": False}
