"""What a real-Airflow deployment counts as its own when it stops: only the processes carrying its marker."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from airflow_pgmigrate.testing.airflow_deployment import MARKER, Deployment


def _sleeper(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process with ``env``, returned once /proc shows that environment: Popen may return (vfork) before the
    kernel has set up the new program's environment, and /proc/<pid>/environ reads empty until then."""
    process = subprocess.Popen(["sleep", "60"], env={**os.environ, **env})
    wanted = {f"{k}={v}".encode() for k, v in env.items()}
    deadline = time.monotonic() + 5
    while not wanted <= set(Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")):
        assert time.monotonic() < deadline, "the sleeper's environment never showed in /proc"
        time.sleep(0.01)
    return process


def test_a_process_with_only_the_same_airflow_home_is_not_the_deployments(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, tmp_path)
    stranger = _sleeper({"AIRFLOW_HOME": str(tmp_path)})  # like the demo's PostgreSQL servers
    own = _sleeper({MARKER: str(tmp_path)})
    try:
        assert deployment.leftovers() == [own.pid]
        deployment.stop(grace=0.1)
        assert own.wait(timeout=5) != 0, "stop() kills what carries the marker"
        assert stranger.poll() is None, "and leaves everything else running"
        assert deployment.leftovers() == []
    finally:
        for process in (stranger, own):
            process.kill()
            process.wait()


def test_a_zombie_is_not_a_leftover(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, tmp_path)
    own = _sleeper({MARKER: str(tmp_path)})
    own.kill()
    time.sleep(0.3)  # dead, not yet reaped: a zombie
    try:
        assert deployment.leftovers() == []
    finally:
        own.wait()
