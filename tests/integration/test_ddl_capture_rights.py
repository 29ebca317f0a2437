"""What the DDL capture (``incremental.ddl: replicate``) needs on the source, said before it is needed: the precheck
item ``ddl_capture``, the capture's own objects never reported as not migrated, and a table the capture's account may
not publish stopping the sync by name instead of losing its rows."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.ddl_capture import capture_names
from airflow_pgmigrate.engine.incremental import SyncError
from tests.integration.test_ddl_replication import SCHEMA, catch_up, config_of

pytestmark = [pytest.mark.integration, pytest.mark.ddl]


def test_precheck_passes_for_a_superuser_and_says_what_is_installed(migration_env):
    env = migration_env
    env.src(SCHEMA)
    report = env.precheck(objects={"schemas": ["app"]}, incremental={"ddl": "replicate"})
    item = report.result("ddl_capture")
    assert item.status == "passed"
    assert "event trigger" in item.detail and "pgmigrate_ddl" in item.detail


def test_precheck_fails_for_an_account_that_may_not_create_event_triggers(migration_env):
    env = migration_env
    env.src(SCHEMA)
    env.create_role(env.source, "pgm_ddl_weak", "weak-pw", "REPLICATION")
    report = env.precheck(source=env.source_info("pgm_ddl_weak", "weak-pw"), objects={"schemas": ["app"]},
                          incremental={"ddl": "replicate"})
    item = report.result("ddl_capture")
    assert item.status == "failed"
    assert "may not create event triggers" in item.detail
    assert "incremental.ddl: stop" in item.fix


def test_precheck_says_what_ddl_does_when_it_stops_the_sync(migration_env):
    env = migration_env
    env.src(SCHEMA)
    item = env.precheck(objects={"schemas": ["app"]}).result("ddl_capture")
    assert item.status == "passed"
    assert "nothing is installed" in item.detail and "stops the sync" in item.detail


def test_the_capture_is_never_listed_as_not_migrated(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config_of(env)
    report = env.precheck(objects={"schemas": ["app"]}, incremental={"ddl": "replicate"})
    assert "event trigger" not in report.result("not_migrated").detail


def test_a_new_table_the_capture_may_not_publish_stops_the_sync_naming_it(migration_env):
    env = migration_env
    env.src(SCHEMA)
    config = config_of(env)
    table = capture_names(config).table
    # The recording function runs as an account that owns neither the new table nor the publication.
    env.create_role(env.source, "pgm_ddl_recorder", "rec-pw")
    env.src(f'GRANT USAGE ON SCHEMA pgmigrate_ddl TO pgm_ddl_recorder; '
            f'ALTER TABLE pgmigrate_ddl."{table.name}" OWNER TO pgm_ddl_recorder; '
            f'ALTER FUNCTION pgmigrate_ddl."{table.name}"(text, text, text) OWNER TO pgm_ddl_recorder')
    env.src("CREATE TABLE app.unpublished (id int PRIMARY KEY); INSERT INTO app.unpublished VALUES (1)")
    assert env.src("SELECT count(*) FROM app.unpublished") == [(1,)]  # the user's DDL went through
    with pytest.raises(SyncError) as err:
        catch_up(env, config)
    message = str(err.value)
    # Named by the record of the failed publishing, or by the check of the publication at the run's start.
    assert "app.unpublished could not be added to publication" in message \
        or "app.unpublished of the selection are not in publication" in message
    assert "ALTER PUBLICATION" in message
