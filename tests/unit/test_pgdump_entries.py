"""Reading pg_dump's plain output: which object a comment or grant is about, and the settings between entries."""

from __future__ import annotations

import pytest

from airflow_pgmigrate.engine.pgdump import DumpEntry, split_dump, tag_target
from airflow_pgmigrate.engine.rewrite import deparse


@pytest.mark.parametrize(("name", "schema", "target"), [
    ('SCHEMA "Audit Log"', None, ("SCHEMA", None, "Audit Log")),
    ("FUNCTION secure_lookup(p_id bigint)", "app", ("ROUTINE", "app", "secure_lookup(p_id bigint)")),
    ("PROCEDURE p(IN a integer)", "app", ("ROUTINE", "app", "p(IN a integer)")),
    ("TYPE email", "app", ("TYPE", "app", "email")),
    ("DOMAIN email", "app", ("TYPE", "app", "email")),
    ("CONSTRAINT qty_not_13 ON DOMAIN positive_qty", "app", ("TYPE", "app", "positive_qty")),
    ("CONSTRAINT orders_recent ON orders", "app", None),
    ("COLUMN \"two\nlines\".id", "app", ("RELATION", "app", "two\nlines")),
    ("TABLE customer_emails", "app", ("RELATION", "app", "customer_emails")),
    ("OPERATOR <# (integer, integer)", "app", ("OPERATOR", "app", "<#")),
    ("OPERATOR CLASS abs_int_ops USING btree", "app", ("OPERATOR CLASS", "app", "abs_int_ops")),
    ("CAST (app.money_amount AS numeric)", None, ("CAST", None, "CAST (app.money_amount AS numeric)")),
    ("FOREIGN SERVER fid_srv", None, ("SERVER", None, "fid_srv")),
    ("SERVER fid_srv", None, ("SERVER", None, "fid_srv")),
    ("LANGUAGE fid_lang", None, ("LANGUAGE", None, "fid_lang")),
    ("TEXT SEARCH CONFIGURATION english_custom", "app", ("TEXT SEARCH CONFIGURATION", "app", "english_custom")),
    ("SOMETHING new", "app", None),
])
def test_the_object_a_comment_or_grant_is_about(name, schema, target):
    assert tag_target(DumpEntry(name, "COMMENT", schema, "")) == target


DUMP = """SET statement_timeout = 0;
SET default_tablespace = '';

--
-- Name: a; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.a (id integer);


SET default_table_access_method = other_am;

--
-- Name: b; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.b (id integer);


--
-- Name: c; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.c (id integer);


SET default_table_access_method = heap;

--
-- Name: d; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.d (id integer);
"""


def test_settings_between_entries_belong_to_the_entries_that_follow():
    preamble, entries = split_dump(DUMP)
    assert [e.name for e in entries] == ["a", "b", "c", "d"]
    assert [e.settings for e in entries] == ["", "SET default_table_access_method = other_am;\n",
                                             "SET default_table_access_method = other_am;\n", ""]
    assert all("SET" not in e.sql for e in entries)
    assert "statement_timeout" in preamble and preamble.endswith("SET default_table_access_method = heap;\n")


def test_text_search_mappings_print_their_dictionaries_qualified():
    from pglast import parse_sql

    statement = ("ALTER TEXT SEARCH CONFIGURATION app.cfg ALTER MAPPING FOR asciiword WITH app.\"Stem\", "
                 "simple")
    printed = deparse(parse_sql(statement)[0].stmt)
    assert printed.endswith('WITH app."Stem", simple'), printed
