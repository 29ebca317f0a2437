"""A real Airflow deployment for tests and the demo: scheduler (LocalExecutor), dag processor, triggerer and API
server, each a process of its own, in a throwaway AIRFLOW_HOME with its own SQLite metadata database.

Each component runs in its own process group; ``stop()`` sends SIGTERM to every group, then SIGKILL after a grace
period, so the LocalExecutor's workers and the task processes go too; any process still running with this
deployment's marker (``PGMIGRATE_AIRFLOW_DEPLOYMENT``, set only for the processes it starts) in its environment (one
that left its group) is killed last. The marker is not AIRFLOW_HOME: a caller (the demo) may have that in its own
environment, and so may the PostgreSQL servers it starts.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPONENTS = {
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status

#: In the environment of every process a deployment starts (and their children), so stop() can find them all.
MARKER = "PGMIGRATE_AIRFLOW_DEPLOYMENT"


@dataclass
class Deployment:
    home: Path
    dags_folder: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            MARKER: str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # A task lost with its worker (a scheduler restart) is found within a minute instead of 5-10: a dead
            # scheduler's tasks are adopted (or reset) by the next one at this interval, once its heartbeat is older
            # than the threshold, and a task whose heartbeat stopped is failed (and retried) after the timeout.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "15",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 180.0) -> Deployment:
        self.home.mkdir(parents=True, exist_ok=True)
        env = self.env()
        self._env = env
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True,
                       capture_output=True, timeout=300)
        for name in COMPONENTS:
            self._launch(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.request("GET", "/api/v2/version", auth=False)
                break
            except (OSError, ApiError):
                time.sleep(1)
        else:
            raise TimeoutError(f"the API server did not answer within {timeout:.0f} s\n{self.logs()}")
        self.token = self.request("GET", "/auth/token", auth=False)["access_token"]
        return self

    def _launch(self, name: str) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        command = [sys.executable, "-m", "airflow", *[a.format(port=self.port) for a in COMPONENTS[name]]]
        self.processes[name] = subprocess.Popen(command, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def restart(self, name: str, grace: float = 15.0) -> None:
        """Stop one component with everything in its process group (for the scheduler: the LocalExecutor's workers
        and the tasks they run), then start it again."""
        process = self.processes[name]
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)
        self._launch(name)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {process.returncode}\n{self.logs()}")

    def logs(self, lines: int = 40) -> str:
        out = []
        for name in self.processes:
            path = self.home / f"{name}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            out.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(out)

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth and self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")) from None
        content_type = response.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in content_type else raw

    def stop(self, grace: float = 15.0) -> None:
        """Stop every process of the deployment: SIGTERM to each component's group, SIGKILL after ``grace``."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes.values():
            _signal_group(process, signal.SIGKILL)  # the group: executor workers and task processes too
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._kill_leftovers(wait=10.0)

    def _kill_leftovers(self, wait: float) -> None:
        """SIGKILL what escaped the groups (a task process in a session of its own) and wait until it is gone: a
        process just sent SIGKILL stays listed for a moment while the kernel tears it down."""
        deadline = time.monotonic() + wait
        while (left := self.leftovers()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def leftovers(self) -> list[int]:
        """Processes still running (zombies excepted: they hold nothing) with this deployment's marker in their
        environment (Linux /proc)."""
        marker = f"{MARKER}={self.home}".encode()
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker in environ.split(b"\0") and state not in ("Z", "X") and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        return found

    # -- what the UI does -------------------------------------------------------------------------------------

    def wait_for_dag(self, dag_id: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.request("GET", f"/api/v2/dags/{dag_id}")
                return
            except ApiError:
                time.sleep(2)
        raise TimeoutError(f"DAG {dag_id} was not parsed within {timeout:.0f} s\n{self.logs()}")

    def trigger(self, dag_id: str, run_id: str) -> None:
        self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "dag_run_id": run_id})

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"])

    def open_question(self, dag_id: str, run_id: str, task_id: str, timeout: float = 300.0,
                      reading_seconds: float = 5.0) -> dict[str, Any]:
        """Wait until ``task_id`` asks its question (a HITL detail with no response yet, the task awaiting input) and
        return it after ``reading_seconds``, the least a person takes to read it. An answer given within about one
        scheduler loop of the question being asked can reach the task before the scheduler has processed the end of
        the asking workload, which Airflow's executor then reports as a task finished while queued."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            details = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/hitlDetails")
            for detail in details.get("hitl_details", []):
                ti = detail.get("task_instance") or {}
                if ti.get("task_id") == task_id and not detail.get("response_received") \
                        and self.task_states(dag_id, run_id).get(task_id) == "awaiting_input":
                    time.sleep(reading_seconds)
                    return detail
            if self.run_state(dag_id, run_id) in ("success", "failed"):
                raise AssertionError(f"the run ended before {task_id} asked: {self.task_states(dag_id, run_id)}")
            time.sleep(2)
        raise TimeoutError(f"{task_id} did not ask within {timeout:.0f} s: {self.task_states(dag_id, run_id)}\n"
                           f"{self.logs()}")

    def answer(self, dag_id: str, run_id: str, task_id: str, option: str) -> dict[str, Any]:
        """The call the UI makes when a person picks an option of a required action."""
        return self.request("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                            {"chosen_options": [option], "params_input": {}})

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} did not end within {timeout:.0f} s: {self.task_states(dag_id, run_id)}")


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
