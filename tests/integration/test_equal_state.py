"""Equal means equal: what logical decoding does not carry (sequences, large objects), partitioned tables and their
partitions, and verification naming a difference of every kind. Real servers, no mocks."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.cutover import CutoverError, run_cutover
from airflow_pgmigrate.engine.verify import compare, differences
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = pytest.mark.integration


def _unfreeze(env) -> None:
    env.source.execute(f'ALTER DATABASE "{env.source_db}" RESET default_transaction_read_only')


def _large_object(env, side: str, oid: int) -> bytes | None:
    run = env.src if side == "source" else env.dst
    rows = run("SELECT lo_get(oid) FROM pg_largeobject_metadata WHERE oid = %s", (oid,))
    return bytes(rows[0][0]) if rows else None


def test_large_objects_created_edited_and_deleted_during_sync_arrive_at_cutover(migration_env):
    env = migration_env
    env.src("CREATE TABLE public.docs (id int PRIMARY KEY, body oid);"
            "INSERT INTO public.docs VALUES (1, lo_from_bytea(0, 'first')), (2, lo_from_bytea(0, 'second')),"
            "(3, lo_from_bytea(0, 'third'))")
    config = start_migration(env, cutover={"freeze_source": True})
    (first,), (third,) = env.src("SELECT body FROM public.docs WHERE id IN (1, 3) ORDER BY id")
    # During sync: a row pointing to a new object (larger than one piece), an edit, a deletion.
    env.src("INSERT INTO public.docs VALUES (4, lo_from_bytea(0, convert_to(repeat('pgmigrate', 250000), 'UTF8')))")
    env.src("SELECT lo_put(%s, 0, 'FIRST edited')", (first,))
    env.src("UPDATE public.docs SET body = NULL WHERE id = 3")
    env.src("SELECT lo_unlink(%s)", (third,))
    catch_up(env, config)
    try:
        report = run_cutover(config, env.source_info(), env.destination_info())
    finally:
        _unfreeze(env)
    assert report["status"] == "completed"
    for (oid,) in env.src("SELECT body FROM public.docs WHERE body IS NOT NULL"):
        assert _large_object(env, "destination", oid) == _large_object(env, "source", oid), oid
    assert _large_object(env, "destination", first) == b"FIRST edited"
    assert _large_object(env, "destination", third) is None
    assert report["large_objects"] == {"copied": 2, "removed": 1}
    assert report["verification"]["equal"] is True and report["verification"]["large_objects"]["source_count"] == 3


SEQUENCES = """
CREATE SEQUENCE public.invoice_no;
CREATE SEQUENCE public."TicketNo";
CREATE SEQUENCE public.countdown INCREMENT BY -1 MINVALUE 1 MAXVALUE 1000000 START 1000000;
CREATE SEQUENCE public.near_floor INCREMENT BY -1 MINVALUE 1 MAXVALUE 500 START 500;
CREATE SEQUENCE public.code_seq;
CREATE FUNCTION public.next_code() RETURNS text LANGUAGE plpgsql AS $$
BEGIN RETURN 'C' || nextval('public.code_seq'); END $$;
CREATE TABLE public.codes (code text PRIMARY KEY DEFAULT public.next_code(), n int);
CREATE TABLE public.tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int);
CREATE TABLE public.orders (id serial PRIMARY KEY, v int);
"""


def _use_sequences(env, times: int) -> None:
    env.src(f"""SELECT nextval('public.invoice_no') FROM generate_series(1, {times});
                SELECT nextval('public."TicketNo"') FROM generate_series(1, {times});
                SELECT nextval('public.countdown') FROM generate_series(1, {times});
                SELECT nextval('public.near_floor') FROM generate_series(1, {times});
                INSERT INTO public.codes (n) SELECT g FROM generate_series(1, {times}) g;
                INSERT INTO public.tickets (v) SELECT g FROM generate_series(1, {times}) g;
                INSERT INTO public.orders (v) SELECT g FROM generate_series(1, {times}) g""")


def test_every_sequence_is_set_in_its_own_direction_with_the_offset_and_the_name_mapping(migration_env):
    env = migration_env
    env.src(SEQUENCES)
    _use_sequences(env, 40)
    config = start_migration(env, objects={"schemas": ["public"]}, mapping={"name_case": "lower"},
                             cutover={"freeze_source": True, "sequence_offset": 1000})
    _use_sequences(env, 7)  # during sync
    catch_up(env, config)
    try:
        report = run_cutover(config, env.source_info(), env.destination_info())
    finally:
        _unfreeze(env)
    assert report["status"] == "completed", report
    values = {e["sequence"]: e["value"] for e in report["sequences"]}
    assert values == {"public.code_seq": 1047, "public.countdown": 1000000 - 46 - 1000,
                      "public.invoice_no": 1047, "public.near_floor": 1, "public.orders_id_seq": 1047,
                      "public.tickets_id_seq": 1047, "public.ticketno": 1047}
    for name, value in values.items():
        assert env.dst(f"SELECT last_value, is_called FROM {name}") == [(value, True)], name
    # Descending sequences hand out values below every value the source used; the one at its floor is exhausted.
    assert env.dst("SELECT nextval('public.countdown')") == [(1000000 - 46 - 1001,)]
    env.dst("INSERT INTO public.codes (n) VALUES (0); INSERT INTO public.tickets (v) VALUES (0)")
    assert env.dst("SELECT code FROM public.codes WHERE n = 0") == [("C1048",)]
    assert {s["sequence"]: s["equal"] for s in report["verification"]["sequences"]} == dict.fromkeys(values, True)


PAYMENTS = """
CREATE TABLE public.payment (id int PRIMARY KEY, amount numeric NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE public.payment_1 PARTITION OF public.payment FOR VALUES FROM (0) TO (1000);
CREATE TABLE public.payment_2 PARTITION OF public.payment FOR VALUES FROM (1000) TO (2000);
INSERT INTO public.payment SELECT g, g % 5 FROM generate_series(1, 1999) g;
"""


def test_a_filter_on_a_partitioned_table_applies_to_its_partitions_in_full_load_sync_and_verification(
        migration_env):
    env = migration_env
    env.src(PAYMENTS)
    config = start_migration(env, objects={"tables": ["public.payment"]}, filters={"public.payment": "amount > 2"})
    wanted = "SELECT count(*), min(amount), sum(id) FROM public.payment WHERE amount > 2"
    assert env.dst("SELECT count(*), min(amount), sum(id) FROM public.payment") == env.src(wanted) == [(800, 3, 800800)]
    # During sync: rows into and out of the filter, in both partitions.
    env.src("INSERT INTO public.payment VALUES (0, 1); UPDATE public.payment SET amount = 7 WHERE id = 1000;"
            "UPDATE public.payment SET amount = 1 WHERE id = 3; UPDATE public.payment SET amount = 4 WHERE id = 1001")
    catch_up(env, config)
    assert env.dst("SELECT count(*), min(amount), sum(id) FROM public.payment") == env.src(wanted)
    assert env.dst("SELECT id FROM public.payment WHERE id IN (0, 3, 1000, 1001) ORDER BY id") == [(1000,), (1001,)]
    report = compare(config, env.source_info(), env.destination_info())
    assert report["equal"] is True, differences(report)
    assert {t["table"]: t["source_rows"] for t in report["tables"]} == {
        "public.payment": 801, "public.payment_1": 399, "public.payment_2": 402}


def test_a_partition_detached_during_sync_is_named_by_verification_and_stops_the_cutover(migration_env):
    env = migration_env
    env.src(PAYMENTS)
    config = start_migration(env)
    env.src("ALTER TABLE public.payment DETACH PARTITION public.payment_2")
    catch_up(env, config)
    with pytest.raises(CutoverError) as info:
        run_cutover(config, env.source_info(), env.destination_info())
    message = str(info.value)
    assert "partitioned table public.payment has partition(s) public.payment_2 that the source does not have" in message
    assert "partitioned table public.payment (missing 0, extra 1000, different 0: 1000, 1001" in message


def test_verification_names_an_injected_difference_of_every_kind(migration_env):
    env = migration_env
    env.src(PAYMENTS + "CREATE SEQUENCE public.invoice_no; SELECT nextval('public.invoice_no');"
            "CREATE TABLE public.docs (id int PRIMARY KEY, body oid);"
            "INSERT INTO public.docs VALUES (1, lo_from_bytea(0, 'contract'))")
    config = start_migration(env)
    catch_up(env, config)
    assert compare(config, env.source_info(), env.destination_info())["equal"] is True
    ((oid,),) = env.src("SELECT body FROM public.docs")
    env.src("SELECT setval('public.invoice_no', 500)")
    env.dst("SET session_replication_role = replica; DELETE FROM public.docs WHERE id = 1;"
            "ALTER TABLE public.payment DETACH PARTITION public.payment_2")
    env.dst("SELECT lo_put(%s, 0, 'CONTRACT')", (oid,))
    report = compare(config, env.source_info(), env.destination_info())
    named = differences(report)
    assert report["equal"] is False
    assert "table public.docs (missing 1, extra 0, different 0: 1)" in named
    assert "partitioned table public.payment lacks partition(s) public.payment_2 that the source has" in named
    assert "sequence public.invoice_no (ascending) is behind the source (1 against 500)" in named
    assert f"large objects with different data: 1 (oid {oid})" in named


def test_xml_on_a_destination_without_libxml_fails_the_precheck_naming_the_columns(migration_env, pg_servers):
    other = pg_servers.other_version()
    if other is None:
        pytest.skip("only one PostgreSQL major version on this machine")
    env = migration_env
    env.src("CREATE TABLE public.feeds (id int PRIMARY KEY, doc xml, docs xml[], title text);"
            "CREATE TABLE public.plain (id int PRIMARY KEY)")
    dbname = env.destination_db
    other.create_database(dbname)
    try:
        if other.execute("SELECT count(*) FROM pg_config() WHERE name = 'CONFIGURE' AND setting LIKE "
                         "'%with-libxml%'", dbname) != [(0,)]:
            pytest.skip(f"PostgreSQL {other.major} here was built with libxml")
        report = env.precheck(destination=other.info(dbname))
        item = report.result("xml_support")
        assert item.status == "failed"
        assert item.objects == ["public.feeds.doc", "public.feeds.docs"]
        assert "unsupported XML feature" in item.detail
        # Leaving the columns out is the way through.
        report = env.precheck(destination=other.info(dbname), objects={"columns": {"public.feeds": ["id", "title"]}})
        assert report.result("xml_support").status == "passed"
    finally:
        other.drop_database(dbname)


def test_config_entries_that_match_no_migrated_table_fail_the_precheck_by_name(migration_env):
    env = migration_env
    env.src(PAYMENTS + "CREATE TABLE public.other (id int PRIMARY KEY)")
    report = env.precheck(
        objects={"tables": ["public.payment"], "columns": {"public.other": ["id"]}},
        filters={"public.payment": "amount > 2", "public.payment_1": "id > 5", "public.other": "id > 0",
                 "public.gone": "id > 0"},
        mapping={"tables": {"public.other": "renamed"}, "schemas": {"sales": "shop"}})
    item = report.result("selected_objects")
    assert item.status == "failed"
    assert item.objects == ["mapping.schemas names sales, a schema the migration does not move","filters names public.other, which the selection does not migrate",
                            "filters names public.gone, which does not exist",
                            "objects.columns names public.other, which the selection does not migrate",
                            "mapping.tables names public.other, which the selection does not migrate"]
    assert report.result("row_filters").status == "passed"  # the parent's and a partition's filter are fine


def test_a_sequence_a_default_function_calls_by_name_migrates_with_a_table_selection(migration_env):
    """Selecting only the table: the function its default calls is needed, and so is the sequence the function's
    body names (the catalog records no dependency on it)."""
    env = migration_env
    env.src(SEQUENCES)
    _use_sequences(env, 40)
    config = start_migration(env, objects={"tables": ["public.codes"]},
                             cutover={"freeze_source": True, "sequence_offset": 10})
    _use_sequences(env, 2)
    catch_up(env, config)
    try:
        report = run_cutover(config, env.source_info(), env.destination_info())
    finally:
        _unfreeze(env)
    assert [(e["sequence"], e["value"]) for e in report["sequences"]] == [("public.code_seq", 52)]
    env.dst("INSERT INTO public.codes (n) VALUES (0)")
    assert env.dst("SELECT code FROM public.codes WHERE n = 0") == [("C53",)]


def test_the_precheck_asks_for_select_on_every_sequence_the_migration_sets(migration_env):
    env = migration_env
    env.src("CREATE SEQUENCE public.invoice_no; CREATE TABLE public.t (id int PRIMARY KEY)")
    env.create_role(env.source, "pgm_seqless", "seqless-pw")
    env.src("GRANT SELECT ON public.t TO pgm_seqless")
    report = env.precheck(source=env.source_info("pgm_seqless", "seqless-pw"), migration_types=["full"],
                          objects={"schemas": ["public"]})
    item = report.result("source_privileges")
    assert item.status == "failed"
    assert 'GRANT SELECT ON SEQUENCE "public"."invoice_no" TO "pgm_seqless";' in item.fix
