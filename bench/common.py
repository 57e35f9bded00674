"""What every benchmark script needs: the machine it ran on, a scratch database, and running
`billing` as a checked subprocess."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
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
