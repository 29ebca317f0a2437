"""Build hook: compiles the incremental sync's C loops (``airflow_pgmigrate/engine/incremental/tuplecodec.c``).

The module is optional: without a C compiler (or with ``PGMIGRATE_PURE_PYTHON=1`` at run time) the same loops run in
Python, slower. A failed build says so and goes on; the package then works as pure Python.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("airflow_pgmigrate/engine/incremental/tuplecodec.c")


def build_command() -> list[str] | None:
    """The compile-and-link command of Python's build settings, with the compiler and flags the environment names
    (``CC``, ``LDSHARED``, ``CFLAGS``, ``CPPFLAGS``, ``LDFLAGS``: as any Python extension build reads them)."""
    linker = os.environ.get("LDSHARED") or sysconfig.get_config_var("LDSHARED")
    if not linker:
        return None
    compiler = sysconfig.get_config_var("CC") or ""
    if "CC" in os.environ and "LDSHARED" not in os.environ and compiler and linker.startswith(compiler):
        linker = os.environ["CC"] + linker[len(compiler):]
    flags = " ".join(os.environ.get(name, "") for name in ("CPPFLAGS", "CFLAGS", "LDFLAGS"))
    return [*shlex.split(linker), "-O2", "-fPIC", "-Wall", f"-I{sysconfig.get_paths()['include']}",
            *shlex.split(flags)]


def compile_extension(root: Path) -> Path | None:
    """Compile the module next to its source; its path, or None when it could not be built (a module left there by
    an earlier build is removed first: an editable install would import it, built from older code)."""
    command = build_command()
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    if not command or not suffix:
        print("airflow-pgmigrate: no C build settings here; the incremental sync runs its pure Python loops",
              file=sys.stderr)
        return None
    source = root / SOURCE
    target = source.with_name("tuplecodec" + suffix)
    target.unlink(missing_ok=True)
    command += [str(source), "-o", str(target)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        print(f"airflow-pgmigrate: the C loops were not built ({detail.strip()[:500]}); the incremental sync runs "
              "its pure Python loops", file=sys.stderr)
        return None
    return target


class TupleCodecHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        built = compile_extension(Path(self.root))
        if built is None:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports it from the source tree
            build_data["force_include"][str(built)] = str(built.relative_to(self.root))
