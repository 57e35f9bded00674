"""What every benchmark script needs: the machine it ran on, a scratch database, and running
`billing` as a checked subprocess."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def machine_info(conn: psycopg.Connection) -> dict[str, str]:
    """CPU, cores, memory, PostgreSQL, Python and kernel versions, for the printed header."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    server = conn.execute("SELECT version()").fetchone()[0]
    return {
        "nproc": str(nproc),
        "cpu": model,
        "memory": _memory(),
        "postgres": server.split(" on ")[0],
        "postgres_full": server,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def scratch_url(admin_url: str, database: str) -> str:
    return make_url(admin_url).set(database=database).render_as_string(hide_password=False)


def recreate_database(admin_url: str, database: str, *, drop_only: bool = False) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


class BenchError(Exception):
    """A setup failure or a result mismatch: the figures cannot be trusted."""


def code_info() -> str:
    """Which billing_cli the measured processes run: this checkout's (git describe), or the copy
    that PYTHONPATH puts first (e.g. a `git archive` of one commit while the checkout is edited)."""
    import billing_cli

    package = Path(billing_cli.__file__).resolve().parent
    checkout = Path(__file__).resolve().parent.parent
    if package.parent != checkout:
        return f"billing_cli from {package}"
    try:
        described = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"],
                                   capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"{described or 'unknown'} (this checkout)"


def billing_executable() -> str:
    beside = Path(sys.executable).with_name("billing")
    found = str(beside) if beside.exists() else shutil.which("billing")
    if not found:
        raise BenchError("the `billing` console script is not installed in this environment")
    return found


def run_checked(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


# --- measured processes and captured statements ---------------------------------------------------

TIME = "/usr/bin/time"  # GNU time: reaps the command with wait4 and reports its rusage


@dataclass
class Measured:
    """One process: its exit status, wall time, peak RSS and CPU, and what it printed."""

    returncode: int
    seconds: float
    rss_mib: float
    cpu_seconds: float
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None, *, check: bool = True) -> Measured:
    """Run `cmd` under GNU time: the wall time is measured here, around the whole thing; the peak
    RSS (ru_maxrss) and the user + system CPU are that one process's, from time's own wait4.
    Through time rather than directly because, on Linux, ru_maxrss carries over exec the memory
    the process had before it (a child forked from this script would report at least this
    script's own peak); time itself is a few MiB. With `check`, a non-zero exit is a BenchError."""
    if not os.access(TIME, os.X_OK):
        raise BenchError(f"{TIME} (GNU time) is needed to measure peak RSS: apt-get install time")
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-", suffix=".txt") as report:
        started = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M %U %S", "-o", report.name, *cmd], env=env,
                              capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        lines = [line for line in Path(report.name).read_text().splitlines() if line.strip()]
    if proc.returncode != 0 and check:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    try:
        maxrss_kib, user, system = lines[-1].split()  # a first line says "Command exited with ..."
        rss_mib, cpu = int(maxrss_kib) / 1024, float(user) + float(system)
    except (IndexError, ValueError):
        raise BenchError(f"{TIME} printed no usage for {' '.join(cmd)}: {lines}") from None
    return Measured(proc.returncode, seconds, rss_mib, cpu, proc.stdout, proc.stderr)


def plain_records(output: str, kind: str) -> list[dict[str, str]]:
    """The `kind key=value ...` lines of a `--plain` run as dicts (values with spaces are quoted)."""
    records = []
    for line in output.splitlines():
        if line.startswith(kind + " "):
            try:
                parts = shlex.split(line)[1:]
            except ValueError:  # an unbalanced quote inside a value: split on spaces
                parts = line.split()[1:]
            records.append(dict(p.split("=", 1) for p in parts if "=" in p))
    return records


class _RecordingConnection:
    """Stands in for a SQLAlchemy Connection: records each execute() and returns no rows."""

    class _NoRows(list):
        def scalars(self):
            return []

        def fetchall(self):
            return []

        def all(self):
            return []

    def __init__(self) -> None:
        self.statements: list[tuple[str, dict]] = []

    def execute(self, statement, parameters=None, **_kwargs):
        self.statements.append((str(getattr(statement, "text", statement)), dict(parameters or {})))
        return self._NoRows()


def captured_statements(fn: Callable[..., object], *args, **kwargs) -> list[tuple[str, dict]]:
    """The SQL text (with :name parameters) and parameters a store function runs, without running
    it: `fn(connection, *args)` is called with a recording stand-in (a generator is drained)."""
    from billing_cli.db import engine

    recorder = _RecordingConnection()
    streamed = engine.stream_rows  # statements read through it are recorded too
    engine.stream_rows = lambda conn, statement, parameters: conn.execute(statement, parameters)
    try:
        result = fn(recorder, *args, **kwargs)
        if isinstance(result, Iterator):
            for _ in result:
                pass
    finally:
        engine.stream_rows = streamed
    return recorder.statements


def explain_analyze(conn, statement: str, parameters: dict, *, fmt: str = "TEXT") -> list[str] | list:
    """EXPLAIN (ANALYZE, BUFFERS) of a captured statement on a SQLAlchemy connection: the text
    plan's lines, or with fmt="JSON" the JSON plan."""
    from sqlalchemy import text

    rows = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT {fmt}) " + statement), parameters).fetchall()
    return rows[0][0] if fmt.upper() == "JSON" else [r[0] for r in rows]
