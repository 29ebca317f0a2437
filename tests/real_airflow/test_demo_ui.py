"""``make demo-ui`` stops cleanly on Ctrl-C: every process it started (Airflow's components, their workers and task
processes, the two PostgreSQL servers) is gone, and it said where the UI is and what to click."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from airflow_pgmigrate.testing.airflow_deployment import free_port

pytestmark = [pytest.mark.real_airflow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def _with_environment(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (entry / "environ").read_bytes() or marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ctrl_c_stops_every_process_the_ui_demo_started():
    base = Path(tempfile.mkdtemp(prefix="pgmigrate-demo-ui-"))
    base.chmod(0o755)  # the unprivileged server user must reach its cluster below
    work = base / "demo"
    port = free_port()
    env = {**os.environ, "PGMIGRATE_DEMO_DIR": str(work)}
    demo = subprocess.Popen([sys.executable, str(ROOT / "demo" / "run_demo.py"), "--ui", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        assert demo.stdout is not None
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        text = "".join(lines)
        assert f"Airflow is up: http://127.0.0.1:{port}" in text, text
        for words in ("press Trigger", "cutover_question", "Required Action", "Keep syncing", "Migration report"):
            assert words in text, text
        started = _with_environment(str(work))
        assert len(started) >= 6, "Airflow's four components and the two servers run"
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground process group
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert demo.returncode == 0, rest
    assert "Airflow stopped (every process it started)" in rest, rest
    time.sleep(1)
    assert _with_environment(str(work)) == [], "no process of the demo survives Ctrl-C"
    shutil.rmtree(base, ignore_errors=True)
