"""The C loops of incremental sync (tuplecodec.c) against their Python twins: the same values and the same COPY text
for the same input, and a clean ValueError (never a read past the buffer) for a malformed message."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys

import pytest

from airflow_pgmigrate.engine.incremental import apply, pgoutput
from airflow_pgmigrate.engine.incremental.pgoutput import TUPLECODEC, UNCHANGED, python_tuple

needs_c = pytest.mark.skipif(TUPLECODEC is None, reason="the C loops are not built (PGMIGRATE_PURE_PYTHON=1)")
ALPHABET = b"abc xyz\t\n\r\\N\x00\xc3\xa9" + bytes(range(32, 127))


def _value(rng: random.Random) -> bytes | None | object:
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.15:
        return UNCHANGED
    size = rng.choice([0, 1, 2, 5, 30, 300, 5000])
    return bytes(rng.choice(ALPHABET) for _ in range(size))


def _tuple_data(values: list) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            out += b"t" + struct.pack("!i", len(v)) + v
    return out


def test_the_c_loops_are_built_here():
    """CI and `make venv` build them (gcc and Python's headers are there); a user without a compiler gets the Python
    loops, which the sync's log names (loops=python)."""
    if os.environ.get("PGMIGRATE_PURE_PYTHON") == "1":
        pytest.skip("turned off by PGMIGRATE_PURE_PYTHON=1")
    assert TUPLECODEC is not None, "tuplecodec is not built: run `make venv` (pip install -e .) with a C compiler"
    assert pgoutput.LOOPS == "c"


def test_pure_python_switch_turns_the_c_loops_off():
    code = "from airflow_pgmigrate.engine.incremental import pgoutput as p; print(p.LOOPS, p.TUPLECODEC)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PGMIGRATE_PURE_PYTHON": "1"}).stdout.split()
    assert out == ["python", "None"]


@needs_c
@pytest.mark.parametrize("seed", range(20))
def test_read_tuple_equals_the_python_reader(seed):
    rng = random.Random(seed)
    for _ in range(50):
        values = [_value(rng) for _ in range(rng.randint(0, 12))]
        prefix = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 9)))
        data = prefix + _tuple_data(values) + b"tail"
        for buf in (data, memoryview(data)):
            got, end = TUPLECODEC.read_tuple(buf, len(prefix))
            want, want_end = python_tuple(buf, len(prefix))
            assert (got, end) == (want, want_end)
            assert got == values and end == len(data) - 4
            assert all(type(v) is bytes for v in got if v is not None and v is not UNCHANGED)


@needs_c
def test_read_tuple_refuses_every_truncation_and_unknown_kinds():
    data = _tuple_data([b"12345", None, UNCHANGED, b"", b"x" * 40])
    for cut in range(len(data)):
        with pytest.raises(ValueError, match="malformed pgoutput TupleData"):
            TUPLECODEC.read_tuple(data[:cut], 0)
    for bad in (struct.pack("!h", 1) + b"b" + struct.pack("!i", 1) + b"x",  # binary: never requested
                struct.pack("!h", -1),
                struct.pack("!h", 1) + b"t" + struct.pack("!i", -5)):
        with pytest.raises(ValueError):
            TUPLECODEC.read_tuple(bad, 0)
    with pytest.raises(ValueError, match="unknown column kind"):
        python_tuple(struct.pack("!h", 1) + b"b" + struct.pack("!i", 1) + b"x", 0)
    with pytest.raises(ValueError):
        TUPLECODEC.read_tuple(data, len(data) + 10)
    with pytest.raises(ValueError):
        TUPLECODEC.read_tuple(data, -1)


@pytest.mark.parametrize("reader", ["python", "c"])
def test_both_readers_refuse_what_the_message_does_not_hold(reader):
    """A malformed message is an error in either reader: the Python one must not hand over a value cut short by the
    message's end, nor read a negative column count as no columns."""
    if reader == "c" and TUPLECODEC is None:
        pytest.skip("the C loops are not built")
    read = python_tuple if reader == "python" else TUPLECODEC.read_tuple
    data = _tuple_data([b"12345", None, UNCHANGED, b"", b"x" * 40])
    for cut in range(len(data)):
        for buf in (data[:cut], memoryview(data)[:cut]):
            with pytest.raises(ValueError, match="malformed pgoutput TupleData"):
                read(buf, 0)
    for bad in (struct.pack("!h", -1), struct.pack("!h", 1) + b"t" + struct.pack("!i", -5) + b"abcdefgh",
                struct.pack("!h", 1) + b"t" + struct.pack("!i", 100) + b"abc"):
        with pytest.raises(ValueError, match="malformed pgoutput TupleData"):
            read(bad, 0)
    for pos in (-1, -len(data), len(data), len(data) + 10):
        with pytest.raises(ValueError, match="malformed pgoutput TupleData"):
            read(data, pos)


@needs_c
@pytest.mark.parametrize("seed", range(20))
def test_copy_block_equals_the_python_formatting(seed):
    rng = random.Random(seed)
    width = rng.randint(1, 8)
    rows = []
    for _ in range(rng.randint(1, 200)):
        row = [_value(rng) for _ in range(width)]
        rows.append([None if v is UNCHANGED else v for v in row])
    positions = sorted(rng.sample(range(width), rng.randint(1, width)))
    got = TUPLECODEC.copy_block(rows, tuple(positions))
    assert got == apply._copy_rows(rows, positions)
    assert b"".join(apply.copy_lines(rows, positions)) == got


@needs_c
def test_copy_block_leaves_what_it_cannot_format_to_python():
    assert TUPLECODEC.copy_block([[b"a", UNCHANGED]], (0, 1)) is None
    assert TUPLECODEC.copy_block([[b"a", 7]], (0, 1)) is None
    assert TUPLECODEC.copy_block([(b"a", b"b")], (0, 1)) is None  # not a list
    assert TUPLECODEC.copy_block([[b"a"]], (0, 1)) is None  # too short
    assert TUPLECODEC.copy_block([[b"a"]], ()) is None
    assert TUPLECODEC.copy_block([], (0,)) == b""
    assert TUPLECODEC.copy_block([[b"a\\b\tc\nd\re", None, b""]], (0, 1, 2)) == b"a\\\\b\\tc\\nd\\re\t\\N\t\n"
