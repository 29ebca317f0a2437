"""Helpers shared by the benchmarks: client programs, servers, cleanup."""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg import sql

from airflow_pgmigrate.testing.local_postgres import LocalPostgres

MB = 1048576


class BenchError(RuntimeError):
    pass


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (cmd &)
    signal.signal(signal.SIGTERM, _interrupt)


# -- client programs ------------------------------------------------------------------------------------------------


def client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({"PGCONNECT_TIMEOUT": "10", "LC_ALL": "C.UTF-8"})
    return env


def redact(text: str, server: LocalPostgres) -> str:
    return text.replace(server.password, "***")


def tool(server: LocalPostgres, name: str) -> str:
    return str(server.bindir / name)


def run_tool(args: list[str], server: LocalPostgres, what: str,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, env=env or client_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{what} failed (exit {result.returncode}): {redact(result.stderr.strip(), server)[-2000:]}")
    return result


def pgbench_args(source: LocalPostgres) -> list[str]:
    return [tool(source, "pgbench"), "-h", "127.0.0.1", "-p", str(source.port), "-U", "postgres"]


def pgbench_env(source: LocalPostgres) -> dict[str, str]:
    return {**client_env(), "PGPASSWORD": source.password}


def pipe_schema(source: LocalPostgres, dump_args: list[str], destination_uri: str, what: str) -> None:
    """``pg_dump <dump_args>`` piped into psql on ``destination_uri``; BenchError ``<what> failed`` if either fails."""
    env = client_env()
    dump = subprocess.Popen(dump_args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    load = subprocess.run([tool(source, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", destination_uri],
                          stdin=dump.stdout, capture_output=True, env=env)
    assert dump.stdout is not None
    dump.stdout.close()
    dump_err = dump.stderr.read() if dump.stderr else b""
    dump.wait()
    if dump.returncode or load.returncode:
        raise BenchError(f"{what} failed: "
                         + redact((dump_err + load.stderr).decode(errors="replace").strip(), source))


def ident(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def log_fn(verbose: bool) -> Callable[[str], None]:
    return (lambda message: print(f"  {message}", flush=True)) if verbose else (lambda message: None)


def run_in_child(target: Callable[..., None], args: tuple[Any, ...], name: str) -> tuple[dict[str, Any], float]:
    """Run ``target(*args, conn)`` in a spawned process; return what it sent over ``conn`` and the wall seconds."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(*args, sender), name=name)
    started = time.monotonic()
    child.start()
    sender.close()
    try:
        result = receiver.recv()
        child.join()
    except (EOFError, KeyboardInterrupt):
        if child.is_alive():
            child.terminate()
            child.join(10)
        raise
    return result, time.monotonic() - started


# -- servers --------------------------------------------------------------------------------------------------------


def _proc_cpu(pid: int, *, children: bool) -> float:
    """CPU seconds of one process (user + system), plus those of its reaped children when asked."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(server: LocalPostgres) -> float:
    """CPU seconds a server has used: postmaster, its living processes, and every backend that has exited.

    Deltas of this (plus the client processes' own) give a run's CPU cost, which stays meaningful when other work
    shares the machine, unlike wall time.
    """
    pid_file = server.data_dir / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    total = _proc_cpu(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == postmaster:
            total += _proc_cpu(int(entry.name), children=False)
    return total


def clients_cpu_seconds() -> float:
    """CPU seconds of this process and of its waited-for descendants (psql, pg_dump, the engine's child)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process and the kernel's own threads: page cache
    writeback, network softirqs), from ``/proc/stat``; idle and I/O wait left out.

    Process CPU (above) misses the kernel's work done outside any process, which a load that writes gigabytes has
    plenty of: the machine can be saturated while the processes add up to less.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def checkpoint(*servers: LocalPostgres) -> None:
    for server in servers:
        server.execute("CHECKPOINT")


def fresh_database(server: LocalPostgres, db: str) -> None:
    server.drop_database(db)
    server.create_database(db)


def workdir_base(workdir: str | None, prefix: str) -> tuple[Path, bool]:
    """The folder of the servers and whether to keep it: ``workdir`` if given, else a new temporary folder."""
    keep = bool(workdir)
    if workdir:
        base = Path(workdir).resolve()
        base.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # the servers run as an unprivileged user when we are root
    return base, keep


# -- cleanup --------------------------------------------------------------------------------------------------------


def stop_servers(base: Path, keep: bool, *servers: LocalPostgres) -> None:
    """Stop the servers and keep their data (``keep``), or destroy them and remove ``base``."""
    if keep:
        for server in servers:
            server.stop()
        print(f"bench: servers stopped, data kept in {base}", flush=True)
    else:
        for server in servers:
            server.destroy()
        shutil.rmtree(base, ignore_errors=True)
