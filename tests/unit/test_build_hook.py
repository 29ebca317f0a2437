"""The build hook of the C loops (hatch_build.py): it compiles with the compiler the environment names, like any other
Python extension build, and a failed build leaves the pure Python loops, never an older module built before."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest

from hatch_build import SOURCE, compile_extension

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / SOURCE).parent.mkdir(parents=True)
    shutil.copy(ROOT / SOURCE, tmp_path / SOURCE)
    return tmp_path


@pytest.mark.parametrize("variable", ["CC", "LDSHARED"])
def test_a_broken_compiler_named_by_the_environment_leaves_the_pure_python_loops(tree, monkeypatch, variable):
    monkeypatch.setenv(variable, "/bin/false")
    stale = (tree / SOURCE).with_name("tuplecodec" + SUFFIX)
    stale.write_bytes(b"a module built from an older tuplecodec.c")
    assert compile_extension(tree) is None
    assert not stale.exists(), "an editable install would go on importing the older module"


def test_the_compiler_and_flags_named_by_the_environment_are_used(tree, monkeypatch):
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    log = tree / "calls"
    wrapper = tree / "mycc"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec cc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("LDSHARED", raising=False)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("CFLAGS", "-DPGMIGRATE_FLAG_SEEN")
    built = compile_extension(tree)
    assert built is not None and built.exists()
    assert "-DPGMIGRATE_FLAG_SEEN" in log.read_text() and "-shared" in log.read_text()
