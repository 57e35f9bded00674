"""What an operator sees in a real terminal (a pseudo-terminal), at 80 and at 160 columns: tables
that never cut an id, a job or a time to "…", lines that fit, and the progress bar without markup."""

from __future__ import annotations

import os
import pty
import re
import select
import time

import pytest
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from tests.conftest import BILLING, billing_subprocess_env
from tests.data import PLANS, add_org, add_usage, set_plan

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def in_terminal(args: list[str], columns: int, cwd, **env: str) -> tuple[int, str]:
    """Run `billing ARGS` on a pseudo-terminal COLUMNS wide; its exit code and screen text."""
    environment = billing_subprocess_env(BILLING_ENV_FILE="/dev/null", LOG_FORMAT="auto", TERM="xterm",
                                         COLUMNS=str(columns), LINES="50", **env)
    pid, terminal = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execvpe(BILLING[0], [*BILLING, *args], environment)
    screen = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen.extend(chunk)
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), ANSI.sub("", screen.decode(errors="replace")).replace("\r", "")


@pytest.fixture
def history(clean_env, db_url, engine, tmp_path):
    """A database with runs of every kind: a partial invoicing run, a successful one, an aggregation."""
    plans = tmp_path / "plans.toml"
    plans.write_text(PLANS)
    runner = CliRunner()
    assert runner.invoke(app, ["plans", "apply", str(plans)], env={"DATABASE_URL": db_url}).exit_code == 0
    with engine.begin() as conn:
        for n in (1, 2):
            add_org(conn, f"org-{n}")
            set_plan(conn, f"org-{n}", "pro")
            add_usage(conn, f"org-{n}", "api_calls", "100")
        set_plan(conn, "org-2", None)
    env = {"DATABASE_URL": db_url}
    assert runner.invoke(app, ["invoice-monthly", "--month", "2024-01"], env=env).exit_code == ExitCode.PARTIAL
    with engine.begin() as conn:
        set_plan(conn, "org-2", "pro")
    assert runner.invoke(app, ["aggregate-hourly", "--hour", "2024-01-31T13"], env=env).exit_code == 0
    return db_url


@pytest.mark.parametrize("columns", [80, 160])
def test_runs_and_schedule_tables_fit_and_cut_nothing(history, tmp_path, columns) -> None:
    code, runs = in_terminal(["runs"], columns, tmp_path, DATABASE_URL=history)
    assert code == 0, runs
    assert "…" not in runs
    assert all(len(line) <= columns for line in runs.splitlines()), runs
    assert "invoice-monthly" in runs and "aggregate-hourly" in runs
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", runs)  # the start time, whole
    # The partial run says who failed, though it stopped with no message.
    assert "1 failed: org-2 (data)" in re.sub(r"\s*\n[│ ]*", " ", runs) or "1 failed:" in runs

    code, schedule = in_terminal(["schedule"], columns, tmp_path)
    assert code == 0, schedule
    assert "…" not in schedule
    assert all(len(line) <= columns for line in schedule.splitlines()), schedule
    for job in ("aggregate-hourly", "invoice-monthly", "reconcile"):
        assert job in schedule


@pytest.mark.parametrize("columns", [80, 160])
def test_an_invoicing_run_in_a_terminal(history, tmp_path, columns) -> None:
    code, screen = in_terminal(["invoice-monthly", "--month", "2024-01"], columns, tmp_path, DATABASE_URL=history)
    assert code == 0, screen
    assert "[progress.description]" not in screen
    assert "✅ org-2 (Org org-2): invoice generated: INV-2024-01-000002" in screen
    assert "⏭  org-1 (Org org-1): already invoiced (INV-2024-01-000001" in screen
    assert "✅ 2024-01: 1 invoiced, 0 failed" in screen
    assert "…" not in screen
