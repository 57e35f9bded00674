"""`billing invoice-monthly` and `billing plans` as an operator runs them."""

from __future__ import annotations

import subprocess
from decimal import Decimal as D

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from billing_cli.outcomes import SCHEDULED_JOBS
from tests.conftest import BILLING, billing_subprocess_env
from tests.data import PLANS, add_org, add_usage, set_plan, utc

runner = CliRunner()


def run(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


@pytest.fixture
def plans_file(tmp_path):
    path = tmp_path / "plans.toml"
    path.write_text(PLANS)
    return path


@pytest.fixture
def billed_db(db_url, engine, plans_file):
    assert run("plans", "apply", str(plans_file), DATABASE_URL=db_url).exit_code == 0
    with engine.begin() as conn:
        for n in range(1, 4):
            add_org(conn, f"org-{n}")
            set_plan(conn, f"org-{n}", "pro")
            add_usage(conn, f"org-{n}", "api_calls", str(n * 100))
    return db_url


@pytest.mark.parametrize("args,message", [
    (["--month", "2024-13"], "--month '2024-13' is not a month"),
    (["--month", "January"], "use YYYY-MM"),
    (["--month", "2999-01"], "month 2999-01 is in the future"),
    (["--regenerate"], "--regenerate needs --org"),
])
def test_usage_errors(clean_env, args, message) -> None:
    result = run("invoice-monthly", *args, DATABASE_URL="postgresql://u@127.0.0.1:1/x")
    assert result.exit_code == ExitCode.USAGE and message in result.output


def test_the_current_month_needs_force(clean_env) -> None:
    from billing_cli.periods import Month, utc_now

    current = str(Month.containing(utc_now()))
    result = run("invoice-monthly", "--month", current, DATABASE_URL="postgresql://u@127.0.0.1:1/x")
    assert result.exit_code == ExitCode.USAGE and "has not ended yet" in result.output and "--force" in result.output


def test_process_month_is_the_default_and_a_bad_one_is_a_config_error(clean_env, billed_db) -> None:
    result = run("invoice-monthly", "--dry-run", DATABASE_URL=billed_db, PROCESS_MONTH="2024-01")
    assert result.exit_code == 0 and "start job=invoice-monthly month=2024-01 dry_run=true" in result.output
    bad = run("invoice-monthly", DATABASE_URL=billed_db, PROCESS_MONTH="2024/01")
    assert bad.exit_code == ExitCode.CONFIG and "PROCESS_MONTH" in bad.output


def test_a_run_with_failures_exits_6_and_the_rerun_completes_it(clean_env, billed_db, engine) -> None:
    with engine.begin() as conn:
        set_plan(conn, "org-2", None)

    first = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed_db)

    assert first.exit_code == ExitCode.PARTIAL, first.output
    assert "organization id=org-2 status=failed error_data=\"no price plan" in first.output
    assert "failed=1 errors_data=1 errors_pdf=0 errors_s3=0 errors_stripe=0 errors_email=0" in first.output
    assert 'what_to_do="1 failed on their data: fix what each line above names' in first.output  # piped too
    with engine.begin() as conn:
        set_plan(conn, "org-2", "pro")
    second = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed_db)
    assert second.exit_code == 0, second.output
    assert "organization id=org-2 status=invoiced number=INV-2024-01-000003 total=12.00" in second.output
    assert "organization id=org-1 status=already_invoiced number=INV-2024-01-000001" in second.output
    third = run("invoice-monthly", "--month", "2024-01", "--rich", DATABASE_URL=billed_db)
    assert third.exit_code == 0
    assert "Found 3 active organizations to invoice" in third.output
    assert "already invoiced (INV-2024-01-000002, 13.00 USD)" in third.output
    assert "Errors by component" in third.output and "Revenue" in third.output


def test_rich_output_shows_the_seed_log(clean_env, billed_db) -> None:
    result = run("invoice-monthly", "--month", "2024-01", "--rich", DATABASE_URL=billed_db)
    assert result.exit_code == 0, result.output
    for expected in ("billing invoice-monthly", "month: 2024-01", "dry run: no",
                     "Found 3 active organizations to invoice",
                     "✅ org-1 (Org org-1): invoice generated: INV-2024-01-000001, 11.00 USD, PDF",
                     "Revenue (USD)", "36.00 USD", "Processing time", "✅ 2024-01: 3 invoiced, 0 failed"):
        assert expected in result.output


def test_plans_apply_is_all_or_nothing(clean_env, db_url, engine, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(PLANS.replace('currency = "EUR"', 'currency = "EURO"'))
    result = run("plans", "apply", str(bad), DATABASE_URL=db_url)
    assert result.exit_code == ExitCode.USAGE
    assert "bad.toml:17: plan 'euro': 'EURO' is not an ISO 4217 currency code" in result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM price_plans")).scalar_one() == 0

    good = tmp_path / "good.toml"
    good.write_text(PLANS)
    assert "plan id=pro result=created" in run("plans", "apply", str(good), DATABASE_URL=db_url).output
    assert "plan id=pro result=unchanged" in run("plans", "apply", str(good), DATABASE_URL=db_url).output
    listing = run("plans", "list", DATABASE_URL=db_url)
    assert listing.exit_code == 0
    assert "plan plan=euro name=Euro currency=EUR" in listing.output
    assert "metric=api_calls model=graduated" in listing.output
    missing = run("plans", "apply", str(tmp_path / "nope.toml"), DATABASE_URL=db_url)
    assert missing.exit_code == ExitCode.USAGE and "cannot read plans file" in missing.output


def test_a_plans_file_that_is_not_utf8_is_a_usage_error(clean_env, db_url, tmp_path) -> None:
    plans = tmp_path / "plans.toml"
    plans.write_bytes(PLANS.encode("utf-16"))  # what a Windows editor saves as "Unicode"
    result = run("plans", "apply", str(plans), DATABASE_URL=db_url)
    assert result.exit_code == ExitCode.USAGE, (result.exit_code, repr(result.exception))
    assert "plans.toml" in result.output and "not UTF-8" in result.output

    plans.write_bytes(PLANS.encode("utf-8-sig"))  # UTF-8 with the byte-order mark Notepad writes: fine
    result = run("plans", "apply", str(plans), DATABASE_URL=db_url)
    assert result.exit_code == 0, result.output


def test_two_overlapping_runs_issue_each_invoice_once_with_gapless_numbers(billed_db, engine, tmp_path) -> None:
    with engine.begin() as conn:
        for n in range(4, 41):
            add_org(conn, f"org-{n:02d}")
            set_plan(conn, f"org-{n:02d}", "pro")
            add_usage(conn, f"org-{n:02d}", "api_calls", "7", utc(2024, 1, 2, 3))
    env = billing_subprocess_env(DATABASE_URL=billed_db, BILLING_ENV_FILE="/dev/null")
    procs = [subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    # The second either waited for nothing (the first had finished) or found the lock taken (exit 7).
    assert sorted(p.returncode for p in procs) in ([0, 0], [0, ExitCode.ALREADY_RUNNING]), outputs

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT organization_id, number FROM invoices WHERE status = 'issued'")).all()
        total = conn.execute(text("SELECT sum(total) FROM invoices")).scalar_one()
    assert len(rows) == 40 and len({org for org, _ in rows}) == 40
    assert sorted(number for _, number in rows) == [f"INV-2024-01-{n:06d}" for n in range(1, 41)]
    assert total == D("11.00") + D("12.00") + D("13.00") + 37 * D("10.07")


def test_four_shards_at_once_invoice_every_organization_once(billed_db, engine, tmp_path) -> None:
    from billing_cli.db.usage_store import Shard

    with engine.begin() as conn:
        for n in range(4, 61):
            add_org(conn, f"org-{n:02d}")
            set_plan(conn, f"org-{n:02d}", "pro")
            add_usage(conn, f"org-{n:02d}", "api_calls", "1", utc(2024, 1, 9, 9))
        active = [r[0] for r in conn.execute(text("SELECT id FROM organizations WHERE status = 'active'"))]
    env = billing_subprocess_env(DATABASE_URL=billed_db, BILLING_ENV_FILE="/dev/null", SHARD_COUNT="4")
    procs = [subprocess.Popen([*BILLING, "invoice-monthly", "--month", "2024-01"], cwd=tmp_path,
                              env={**env, "JOB_COMPLETION_INDEX": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT organization_id, number FROM invoices WHERE status = 'issued'")).all()
    assert sorted(org for org, _ in rows) == sorted(active)  # every active organization exactly once
    assert sorted(n for _, n in rows) == [f"INV-2024-01-{n:06d}" for n in range(1, len(active) + 1)]
    for index, out in enumerate(outputs):  # each shard took exactly its own organizations
        mine = {o for o in active if Shard(index, 4).owns(o)}
        assert f"found={len(mine)} " in out and f"shard={index + 1}/4" in out.splitlines()[0]
    assert all(f"found={len(active)} " not in out for out in outputs)

    again = subprocess.run([*BILLING, "invoice-monthly", "--month", "2024-01", "--shard-index", "2"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and " invoiced=0 " in again.stdout
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM invoices")).scalar_one() == len(active)


def test_a_shard_index_outside_the_count_is_refused(clean_env) -> None:
    result = run("invoice-monthly", "--month", "2024-01", "--shard-index", "4", "--shard-count", "4",
                 DATABASE_URL="postgresql://u@127.0.0.1:1/x")
    assert result.exit_code == ExitCode.USAGE and "is not below --shard-count 4" in result.output
    env_error = run("invoice-monthly", JOB_COMPLETION_INDEX="5", SHARD_COUNT="4", DATABASE_URL="postgresql://u@h/x")
    assert env_error.exit_code == ExitCode.CONFIG and "JOB_COMPLETION_INDEX=5 is not below SHARD_COUNT=4" in env_error.output


def test_an_org_of_another_shard_is_refused_not_passed_over_with_exit_0(clean_env, billed_db, engine) -> None:
    """`--org org-2 --regenerate` from a pod of the sharded Job (SHARD_COUNT=2, index 0): org-2 is in
    shard 2/2. The run must say so, not find nothing and succeed as if org-2 had been handled."""
    assert run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed_db).exit_code == 0
    with engine.begin() as conn:
        add_usage(conn, "org-2", "api_calls", "1000", hour=utc(2024, 1, 20, 10))

    result = run("invoice-monthly", "--month", "2024-01", "--org", "org-2", "--regenerate", DATABASE_URL=billed_db,
                 SHARD_COUNT="2", JOB_COMPLETION_INDEX="0")

    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--org org-2: in shard 2/2, not this run's shard 1/2" in result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM invoices WHERE status = 'void'")).scalar_one() == 0
    fixed = run("invoice-monthly", "--month", "2024-01", "--org", "org-2", "--regenerate", "--shard-index", "0",
                "--shard-count", "1", DATABASE_URL=billed_db, SHARD_COUNT="2", JOB_COMPLETION_INDEX="0")
    assert fixed.exit_code == 0 and "voids=INV-2024-01-000002" in fixed.output, fixed.output


def test_a_dry_run_with_json_prints_the_plan_and_a_real_run_carries_it_out(clean_env, billed_db, engine) -> None:
    import json

    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET price_plan_id = 'gold' WHERE id = 'org-3'"))
    dry = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--dry-run", "--json"],
                        env={"DATABASE_URL": billed_db})
    plan = {item["organization_id"]: item for item in json.loads(dry.stdout)["plan"]}

    assert dry.exit_code == ExitCode.PARTIAL
    assert {org: (item["action"], item["number"], item["total"], item["pending"]) for org, item in plan.items()} == {
        "org-1": ("issue", "INV-2024-01-000001", "11.00", ["pdf"]),
        "org-2": ("issue", "INV-2024-01-000002", "12.00", ["pdf"]),
        "org-3": ("refuse", None, None, []),
    }
    assert plan["org-3"]["errors"] == [["data", "price plan 'gold' does not exist: add it with `billing plans apply`"]]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM invoices")).scalar_one() == 0

    real = run("invoice-monthly", "--month", "2024-01", DATABASE_URL=billed_db)
    with engine.connect() as conn:
        issued = conn.execute(text("SELECT organization_id, number, total FROM invoices ORDER BY number")).all()
    assert real.exit_code == ExitCode.PARTIAL
    assert [tuple(r) for r in issued] == [("org-1", "INV-2024-01-000001", D("11.00")),
                                          ("org-2", "INV-2024-01-000002", D("12.00"))]
    again = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--dry-run", "--json"],
                          env={"DATABASE_URL": billed_db})
    assert [(i["organization_id"], i["action"]) for i in json.loads(again.stdout)["plan"]] == [
        ("org-1", "skip"), ("org-2", "skip"), ("org-3", "refuse")]


def test_shared_options_are_accepted_before_and_after_the_command(clean_env, billed_db) -> None:
    import json

    after = run("status", "--log-format", "json", DATABASE_URL=billed_db)
    before = run("--json", "runs", DATABASE_URL=billed_db)
    bad = run("status", "--log-format", "xml", DATABASE_URL=billed_db)

    assert after.exit_code == 0 and "Job status" not in after.output and "job=aggregate-hourly" not in after.output
    assert [json.loads(line)["event"] for line in after.stdout.splitlines()] == ["status"] * len(SCHEDULED_JOBS)  # one line per scheduled job
    assert before.exit_code == 0 and isinstance(json.loads(before.stdout), list)
    assert bad.exit_code == ExitCode.USAGE and "--log-format" in bad.output


def test_what_a_dry_run_a_failure_and_a_regeneration_say(clean_env, billed_db, engine) -> None:
    dry = run("invoice-monthly", "--month", "2024-01", "--dry-run", "--rich", DATABASE_URL=billed_db)
    assert dry.exit_code == 0, dry.output
    assert "✅ 2024-01: 3 would be invoiced, 0 failed" in dry.output

    with engine.begin() as conn:
        set_plan(conn, "org-2", None)
    failed = run("invoice-monthly", "--month", "2024-01", "--rich", DATABASE_URL=billed_db)
    assert failed.exit_code == ExitCode.PARTIAL, failed.output
    # A rerun alone cannot fix bad data: the summary says what to fix, and where.
    assert "1 failed on their data: fix what each line above names" in failed.output
    assert "rerun the same command to finish the failed ones" not in failed.output

    with engine.begin() as conn:
        add_usage(conn, "org-1", "api_calls", "1000", hour=utc(2024, 1, 20, 10))
    preview = run("invoice-monthly", "--month", "2024-01", "--org", "org-1", "--regenerate", "--dry-run", "--rich",
                  DATABASE_URL=billed_db)
    assert preview.exit_code == 0, preview.output
    assert "would replace INV-2024-01-000001, would be voided: 11.00 USD -> 20.50 USD (+9.50 USD)" in preview.output
    real = run("invoice-monthly", "--month", "2024-01", "--org", "org-1", "--regenerate", DATABASE_URL=billed_db)
    assert real.exit_code == 0, real.output
    line = next(x for x in real.output.splitlines() if x.startswith("organization id=org-1 "))
    assert "voids=INV-2024-01-000001 voided_total=11.00" in line and "total=20.50" in line


def test_an_organization_is_billed_only_for_months_it_existed_in(clean_env, billed_db) -> None:
    # The organizations were created long after 1999: that month owes no base fee, and has no usage.
    result = run("invoice-monthly", "--month", "1999-01", "--dry-run", DATABASE_URL=billed_db)
    assert result.exit_code == 0, result.output
    assert "invoiced=0 already_invoiced=0 nothing_to_bill=3 failed=0" in result.output


def test_a_pdf_is_said_stored_only_where_it_is(clean_env, billed_db, engine, tmp_path) -> None:
    """S3 off and no INVOICE_OUTPUT_DIR: the PDF is rendered (its hash recorded) but kept nowhere,
    and the run says so; with an output folder, the line names the file that is there."""
    first = run("invoice-monthly", "--month", "2024-01", "--org", "org-1", "--rich", DATABASE_URL=billed_db)
    assert first.exit_code == 0, first.output
    assert "PDF not kept (S3 off and no INVOICE_OUTPUT_DIR; a rerun with it set writes the file)" in " ".join(
        first.output.split()) and "PDF stored" not in first.output
    with engine.begin() as conn:
        assert conn.execute(text("SELECT pdf_path, pdf_sha256 IS NOT NULL FROM invoices")).one() == (None, True)
    assert not list(tmp_path.rglob("*.pdf"))

    plain = run("invoice-monthly", "--month", "2024-01", "--org", "org-2", DATABASE_URL=billed_db)
    assert 'pdf="not kept"' in plain.output, plain.output

    out = tmp_path / "kept"
    kept = run("invoice-monthly", "--month", "2024-01", "--org", "org-3", "--rich", DATABASE_URL=billed_db,
               INVOICE_OUTPUT_DIR=str(out))
    path = out / "2024-01" / "INV-2024-01-000003.pdf"
    assert path.is_file() and f"PDF stored in {path}" in " ".join(kept.output.split()), kept.output

    # The PDF that was not kept is written by a rerun that has somewhere to keep it, and said so.
    later = run("invoice-monthly", "--month", "2024-01", "--org", "org-1", "--rich", DATABASE_URL=billed_db,
                INVOICE_OUTPUT_DIR=str(out))
    first_pdf = out / "2024-01" / "INV-2024-01-000001.pdf"
    assert first_pdf.is_file() and f"completed now: PDF stored in {first_pdf}" in " ".join(later.output.split())
    with engine.begin() as conn:
        assert conn.execute(text("SELECT pdf_path FROM invoices WHERE number = 'INV-2024-01-000001'")).scalar_one() \
            == str(first_pdf)
