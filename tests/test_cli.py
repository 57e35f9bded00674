"""The command line as an operator sees it: exit codes, messages, output, and no secret anywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer.main
from sqlalchemy import make_url
from typer.testing import CliRunner

from billing_cli import __version__
from billing_cli.cli import app
from billing_cli.db.migrate import HEAD
from billing_cli.errors import ExitCode
from tests.data import SELLER_ENV, add_event, add_org, utc

runner = CliRunner()

SECRETS = {
    "STRIPE_API_KEY": "sk_test_51SECRETstripeKEY000",
    "INVOICE_SMTP_PASSWORD": "smtp-SECRET-pw",
}


def run(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


def url_with_password(url: str, password: str = "db-SECRET-pw") -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def all_commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    paths = []
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        if hasattr(command, "commands"):
            paths += [[name, sub] for sub in command.commands]
        else:
            paths.append([name])
    return paths


def test_help_lists_the_jobs_and_helpers(clean_env) -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in ("aggregate-hourly", "invoice-monthly", "legacy-run", "config", "db", "demo"):
        assert name in result.output


@pytest.mark.parametrize("path", all_commands(), ids=" ".join)
def test_every_command_has_help_with_an_example(clean_env, path: list[str]) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0
    assert "Example: " in result.output and "billing " in result.output.split("Example: ")[1].splitlines()[0]


def test_version(clean_env) -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"billing {__version__}"


def test_help_does_not_import_heavy_client_libraries() -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "billing_cli", "--help"],
                          capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    for heavy in ("boto3", "botocore", "stripe", "fpdf", "sqlalchemy", "alembic"):
        assert heavy not in imported, f"`billing --help` imported {heavy}"


@pytest.mark.parametrize("args,message", [
    (["--hour", "2024-13-01T10"], "--hour '2024-13-01T10' is not"),
    (["--hour", "yesterday"], "use YYYY-MM-DDTHH"),
    (["--from", "2024-01-31T12", "--to", "2024-01-31T10"], "is after --to"),
    (["--from", "2024-01-31T12"], "--from and --to go together"),
])
def test_bad_hours_are_usage_errors_before_touching_the_database(clean_env, args, message) -> None:
    result = run("aggregate-hourly", *args, DATABASE_URL="postgresql://u@127.0.0.1:1/none")
    assert result.exit_code == ExitCode.USAGE
    assert message in result.output and "Traceback" not in result.output


def test_an_unreachable_database_is_one_clear_line(clean_env) -> None:
    result = run("aggregate-hourly", DATABASE_URL="postgresql://billing:db-SECRET-pw@127.0.0.1:1/billing")
    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot reach PostgreSQL at 127.0.0.1:1/billing" in lines[0]
    assert "db-SECRET-pw" not in result.output


def test_a_schema_that_is_behind_is_refused(clean_env, empty_db_url) -> None:
    result = run("aggregate-hourly", DATABASE_URL=empty_db_url)
    assert result.exit_code == ExitCode.SCHEMA_OUTDATED
    assert "billing db upgrade" in result.output

    current = run("db", "current", DATABASE_URL=empty_db_url)
    assert current.exit_code == ExitCode.SCHEMA_OUTDATED and "current=none" in current.output
    upgraded = run("db", "upgrade", DATABASE_URL=empty_db_url)
    assert upgraded.exit_code == 0 and f"before=none after={HEAD}" in upgraded.output
    assert run("aggregate-hourly", DATABASE_URL=empty_db_url).exit_code == 0


@pytest.mark.parametrize("env,message", [
    ({"INVOICE_ENABLE_S3": "true"}, "INVOICE_ENABLE_S3 is on but INVOICE_S3_BUCKET is not set"),
    ({"DRY_RUN": "perhaps"}, "DRY_RUN='perhaps'"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "DATABASE_URL": ""}, "DATABASE_URL is not set"),
    ({"INVOICE_LOCALE": "xx"}, "INVOICE_LOCALE='xx': not a locale known to CLDR"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, "INVOICE_SELLER_NAME and INVOICE_SELLER_ADDRESS are unset or the "
                                              "placeholder"),
])
def test_configuration_errors_exit_3(clean_env, env, message) -> None:
    env = {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x", **env}
    result = run("aggregate-hourly", **env)
    assert result.exit_code == ExitCode.CONFIG and message in result.output


def test_dotenv_is_read_from_the_working_directory(clean_env) -> None:
    (clean_env / ".env").write_text("DRY_RUN=sometimes\n")
    result = run("aggregate-hourly")
    assert result.exit_code == ExitCode.CONFIG and "from .env" in result.output


def test_aggregate_hourly_plain_output(clean_env, db_url, engine) -> None:
    with engine.begin() as s:
        add_org(s, "org-a")
        add_event(s, "org-a", "api_calls", "1.5", utc(2024, 1, 31, 13, 10))
        add_event(s, "org-a", "api_calls", "2", utc(2024, 1, 31, 13, 20))

    result = run("aggregate-hourly", "--hour", "2024-01-31T13", "--lookback", "0", DATABASE_URL=db_url)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("start job=aggregate-hourly window_start=2024-01-31T13:00Z "
                               "window_end=2024-01-31T14:00Z hours=1 dry_run=false")
    assert "hour hour=2024-01-31T13:00Z status=ok organizations=1 events=2 inserted=1" in result.output
    assert "metric metric=api_calls organizations=1 events=2 quantity=3.5" in result.output
    assert lines[-1].startswith("summary job=aggregate-hourly hours=1 failed_hours=0 organizations=1 events=2 "
                                "rows_written=1 rows_removed=0 orphan_events=0 dry_run=false")
    assert lines[-1].endswith("outcome=ok")
    assert "\x1b[" not in result.output  # no colour codes without a terminal


def test_aggregate_hourly_rich_output_and_dry_run_env(clean_env, db_url, engine) -> None:
    with engine.begin() as s:
        add_org(s, "org-a")
        add_event(s, "org-a", "api_calls", "1234567", utc(2024, 1, 31, 13, 10))

    result = run("aggregate-hourly", "--hour", "2024-01-31T13", "--rich", DATABASE_URL=db_url, DRY_RUN="yes")

    assert result.exit_code == 0, result.output
    assert "billing aggregate-hourly" in result.output and "dry run: yes" in result.output
    assert "✅ 2024-01-31T13:00Z  1 organizations, 1 events → would write 1 rows" in result.output
    assert "1,234,567" in result.output and "(dry run: nothing written)" in result.output
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM usage_hourly").scalar_one() == 0


def test_config_shows_sources_and_masks_secrets(clean_env) -> None:
    (clean_env / ".env").write_text("INVOICE_S3_BUCKET=from-dotenv\n")
    result = run("config", DATABASE_URL="postgresql://billing:db-SECRET-pw@db:5432/billing",
                 STRIPE_API_KEY=SECRETS["STRIPE_API_KEY"])
    assert result.exit_code == 0, result.output
    assert "setting name=STRIPE_API_KEY value=sk_t**** source=env" in result.output
    assert "setting name=DATABASE_URL value=postgresql://billing:****@db:5432/billing source=env" in result.output
    assert "setting name=INVOICE_S3_BUCKET value=from-dotenv source=.env" in result.output
    assert "setting name=INVOICE_S3_REGION value=us-east-1 source=default" in result.output
    assert "config status=valid" in result.output


def test_config_exits_3_after_showing_an_invalid_configuration(clean_env) -> None:
    result = run("config", INVOICE_ENABLE_STRIPE="true")
    assert result.exit_code == ExitCode.CONFIG
    assert "setting name=INVOICE_ENABLE_STRIPE value=true source=env" in result.output
    assert "STRIPE_API_KEY is not set" in result.output


def test_no_secret_appears_in_any_command_output(clean_env, db_url) -> None:
    env = {**SECRETS, **SELLER_ENV, "DATABASE_URL": url_with_password(db_url), "INVOICE_SMTP_USERNAME": "mailer",
           "INVOICE_ENABLE_STRIPE": "true", "INVOICE_ENABLE_EMAIL": "true",
           "INVOICE_SMTP_HOST": "127.0.0.1", "INVOICE_SMTP_FROM": "billing@example.com"}
    unreachable = {**env, "DATABASE_URL": "postgresql://billing:db-SECRET-pw@127.0.0.1:1/billing"}
    outputs = []
    for args, environment in [
        (["config"], env), (["config", "--rich"], env), (["aggregate-hourly"], env),
        (["aggregate-hourly", "--rich"], env), (["db", "current"], env), (["db", "upgrade"], env),
        (["aggregate-hourly"], unreachable), (["db", "current"], unreachable),
        (["aggregate-hourly"], {**env, "DRY_RUN": "bogus"}),
    ]:
        result = run(*args, **environment)
        outputs.append(result.output)
        assert result.exit_code in (0, ExitCode.DATABASE_UNAVAILABLE, ExitCode.CONFIG), result.output
    combined = "\n".join(outputs)
    for secret in (*SECRETS.values(), "db-SECRET-pw"):
        assert secret not in combined


def test_a_shared_json_flag_is_refused_by_a_command_that_has_no_json_form(clean_env) -> None:
    result = runner.invoke(app, ["--json", "schedule"])
    assert result.exit_code == ExitCode.USAGE and "`billing schedule` has no JSON output" in result.output


def test_a_failed_run_still_prints_its_summary_as_json(clean_env) -> None:
    import json

    result = runner.invoke(app, ["aggregate-hourly", "--hour", "2024-01-31T13", "--json"],
                           env={"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x"})
    summary = json.loads(result.stdout)
    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE
    assert (summary["outcome"], summary["job"]) == ("failed", "aggregate-hourly")
    assert "cannot reach PostgreSQL" in summary["message"] and "hunter2" not in result.output


def test_the_smtp_password_never_shows_in_a_repr() -> None:
    from billing_cli.delivery.mailer import SmtpMailer

    assert "s3cr3t" not in repr(SmtpMailer("smtp.example.com", 587, "starttls", username="u", password="s3cr3t"))
