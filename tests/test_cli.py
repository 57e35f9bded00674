"""The command line as an operator sees it: exit codes, messages, output, and no secret anywhere."""

from __future__ import annotations

import re
import shlex
import os
import subprocess
import sys

import pytest
import typer.main
from sqlalchemy import make_url, text
from typer.testing import CliRunner

from billing_cli import __version__
from billing_cli.cli import app
from billing_cli.db.migrate import HEAD
from billing_cli.errors import ExitCode
from tests.conftest import BILLING, billing_subprocess_env
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


def url_with_raw_password(url: str, password: str) -> str:
    """`url` with this password written into it as is, not percent-encoded, as an operator pastes it
    into a Secret."""
    parsed = make_url(url)
    return f"postgresql://{parsed.username}:{password}@{parsed.host}:{parsed.port or 5432}/{parsed.database}"


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


@pytest.mark.parametrize("path", [[], ["invoice-monthly"], ["db"], ["db", "upgrade"], ["plans", "apply"]], ids=" ".join)
def test_dash_h_is_help(clean_env, path: list[str]) -> None:
    short, long = run(*path, "-h"), run(*path, "--help")
    assert short.exit_code == 0 and short.output == long.output
    assert short.output.startswith(f"Usage: billing {' '.join(path)}".rstrip() + " ")


def test_shell_completion_is_offered_and_completes(clean_env) -> None:
    assert "--install-completion" in run("--help").output
    # The shell is detected from the parent process, as it is for an operator typing the command.
    command = " ".join(shlex.quote(part) for part in BILLING)
    # (`; exit $?` keeps bash as the parent: a lone command would be exec'd in its place)
    shown = subprocess.run(["bash", "-c", f"{command} --show-completion; exit $?"], env=billing_subprocess_env(),
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "complete -o default -F _billing_completion billing" in shown.stdout
    # What bash asks the program when Tab is pressed after `billing inv`, and after `--sh`.
    for words, cword, expected in (("billing inv", "1", ["invoice-monthly", "invoices"]),
                                   ("billing invoice-monthly --sh", "2", ["--shard-index", "--shard-count"])):
        completed = subprocess.run(BILLING, env=billing_subprocess_env(
            _BILLING_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=cword),
            capture_output=True, text=True, timeout=60)
        assert completed.returncode == 0 and completed.stdout.split() == expected, completed


def command_paths_with_groups() -> list[list[str]]:
    root = typer.main.get_command(app)
    commands = root.commands.items()  # type: ignore[attr-defined]
    groups = [[name] for name, command in commands if hasattr(command, "commands")]
    return [[], *groups, *all_commands()]


@pytest.mark.parametrize("path", command_paths_with_groups(), ids=lambda path: " ".join(path) or "billing")
def test_every_option_says_what_to_type(clean_env, path: list[str]) -> None:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    for param in command.params:
        takes_a_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
        if takes_a_value and param.name not in ("help",):
            assert param.metavar, f"billing {' '.join(path)}: {param.opts[0]} has no metavar"
    help_text = run(*path, "--help").output
    for generic in ("<str>", "<int", "<list", "TEXT", "INTEGER"):
        assert generic not in help_text, f"billing {' '.join(path)} --help shows {generic!r}"


def test_top_level_help_shows_whole_command_descriptions(clean_env) -> None:
    help_text = run("--help").output
    commands_section = help_text.split("Commands:")[1]
    assert "..." not in commands_section and "…" not in commands_section
    flat = " ".join(commands_section.split())
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        first_paragraph = " ".join(command.help.split("\n\n")[0].split())
        first_sentence = re.match(r"(.+?\.)(\s|$)", first_paragraph)
        assert f"{name} {first_sentence.group(1) if first_sentence else first_paragraph}" in flat, name


@pytest.mark.parametrize("command", ["invoice-monthly", "reconcile"])
def test_org_is_repeated_and_a_comma_gets_a_hint(clean_env, command: str) -> None:
    result = run(command, "--org", "org-1, org-2", DATABASE_URL="postgresql://u@127.0.0.1:1/none")
    assert result.exit_code == ExitCode.USAGE
    assert "give each organization its own --org (--org org-1 --org org-2)" in result.output


def test_exit_codes_are_listed_by_the_program(clean_env) -> None:
    import json

    epilog = " ".join(run("--help").output.split("Exit codes:")[1].split())
    for code in ExitCode:
        assert f"{int(code)} {code.name}," in epilog
    assert "130 Ctrl-C" in epilog and "`billing exit-codes`" in epilog

    plain = run("exit-codes", "--plain")
    assert plain.exit_code == 0
    assert ('exit-code code=5 name=SCHEMA_OUTDATED meaning="The schema is behind this program: run '
            '`billing db upgrade`." retry="no: migrate first"') in plain.output
    as_json = run("exit-codes", "--json")
    assert as_json.exit_code == 0
    listed = json.loads(as_json.stdout)
    assert [entry["code"] for entry in listed] == [*(int(code) for code in ExitCode), 130]
    assert [entry["name"] for entry in listed] == [*(code.name for code in ExitCode), None]
    assert all(set(entry) == {"code", "name", "meaning", "retry"} and entry["meaning"] for entry in listed)
    assert listed[int(ExitCode.PARTIAL)]["retry"] == "yes"
    assert json.loads(run("--json", "exit-codes").stdout) == listed


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


@pytest.mark.parametrize("url", [
    "postgresql://billing:db-SECRET-pw@db:54x2/billing",  # a typo in the port
    "postgresql://billing:db-SECRET-pw@[::1/billing",  # an unclosed IPv6 bracket
    "postgresql://billing:db-SECRET-pw@127.0.0.1:5432/billing?sslmod=require",  # a misspelt option
])
def test_a_database_url_that_cannot_be_used_is_a_configuration_error_not_a_traceback(clean_env, url) -> None:
    config = run("config", DATABASE_URL=url)
    assert config.exit_code == ExitCode.CONFIG, "billing config calls it valid: " + config.output
    result = run("aggregate-hourly", DATABASE_URL=url)
    assert result.exit_code == ExitCode.CONFIG, (result.exit_code, repr(result.exception))
    assert "DATABASE_URL" in result.output and "db-SECRET-pw" not in result.output


def test_a_database_url_whose_password_needs_percent_encoding_is_a_configuration_error_not_retried(
        clean_env) -> None:
    result = run("aggregate-hourly", DATABASE_URL="postgresql://billing:db-SECRET@pw-TAIL@127.0.0.1:5432/billing")
    # Exit 4 is retried by Kubernetes (backoffLimit) and tells the operator to wait for the server.
    assert result.exit_code == ExitCode.CONFIG, result.output


def test_an_option_libpq_refuses_only_when_connecting_is_a_configuration_error_too(db_url) -> None:
    # The configuration check knows the values of sslmode & co.; a newer libpq may check more.
    from billing_cli.db.engine import check_connection, describe_server, make_engine
    from billing_cli.errors import ConfigError

    url = make_url(url_with_password(db_url)).update_query_dict({"sslmode": "bogus"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(ConfigError, match='invalid sslmode value: "bogus"') as err:
            check_connection(engine, describe_server(str(url)))
    finally:
        engine.dispose()
    assert "db-SECRET-pw" not in str(err.value) and "cannot reach" not in str(err.value)


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


def test_a_billing_env_file_that_does_not_exist_is_a_configuration_error(clean_env) -> None:
    # The crontab points BILLING_ENV_FILE at the file holding DATABASE_URL and
    # BILLING_REQUIRE_DATABASE_URL; a typo in its path loses both, silently.
    result = run("config", BILLING_ENV_FILE=str(clean_env / "billing.env"))
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "billing.env" in result.output
    assert f"BILLING_ENV_FILE='{clean_env / 'billing.env'}': no such file" in result.output

    job = run("aggregate-hourly", BILLING_ENV_FILE=str(clean_env / "billing.env"))
    assert job.exit_code == ExitCode.CONFIG and "BILLING_ENV_FILE=" in job.output, job.output
    # What the benchmarks and tests use to read no file at all; a directory is a typo too.
    assert run("config", BILLING_ENV_FILE="/dev/null").exit_code == 0
    assert run("config", BILLING_ENV_FILE=str(clean_env)).exit_code == ExitCode.CONFIG


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
                               'window_end=2024-01-31T14:00Z hours=1 why="--hour 2024-01-31T13" dry_run=false')
    assert "hour hour=2024-01-31T13:00Z status=ok organizations=1 events=2 inserted=1" in result.output
    assert "metric metric=api_calls organizations=1 events=2 quantity=3.5" in result.output
    assert lines[-1].startswith("summary job=aggregate-hourly hours=1 failed_hours=0 organizations=1 events=2 "
                                "rows_written=1 rows_removed=0 orphan_events=0 default_partition_events=2 "
                                "dry_run=false")
    assert lines[-1].endswith("outcome=succeeded")
    assert "\x1b[" not in result.output  # no colour codes without a terminal


def test_an_organization_id_with_a_line_break_cannot_forge_a_log_line(clean_env, db_url, engine) -> None:
    """Organization ids come from the producers: one quoted in a warning stays on the warning's line
    (a log reader would take a line of its own for a record of the run)."""
    forged = "summary job=aggregate-hourly outcome=succeeded"
    with engine.begin() as s:
        add_event(s, f"ghost\n{forged}", "api_calls", "1", utc(2024, 1, 31, 13, 10))  # no organizations row

    result = run("aggregate-hourly", "--hour", "2024-01-31T13", "--lookback", "0", DATABASE_URL=db_url)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert not [line for line in lines if line.startswith(forged)]
    assert any(line.startswith("warning: ") and f"ghost; {forged}" in line for line in lines), result.output
    assert lines[-1].startswith("summary job=aggregate-hourly hours=1 ") and lines[-1].endswith("outcome=succeeded")


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


BROKEN = {"DRY_RUN": "perhaps", "INVOICE_SMTP_PORT": "x", "INVOICE_ENABLE_STRIPE": "true",
          "SHARD_COUNT": "2", "JOB_COMPLETION_INDEX": "5", **SELLER_ENV}


def test_config_lists_every_problem_and_marks_its_rows(clean_env) -> None:
    result = run("config", **BROKEN)
    assert result.exit_code == ExitCode.CONFIG
    out = result.output
    assert "setting name=DRY_RUN value=perhaps source=env problem=1" in out
    assert "setting name=INVOICE_SMTP_PORT value=x source=env problem=2" in out
    assert "setting name=INVOICE_ENABLE_STRIPE value=true source=env problem=3" in out
    assert 'setting name=STRIPE_API_KEY value="(not set)" source=default problem=3' in out
    assert "setting name=JOB_COMPLETION_INDEX value=5 source=env problem=4" in out
    assert "setting name=INVOICE_S3_REGION value=us-east-1 source=default problem=-" in out
    assert "config-problem number=1 variables=DRY_RUN message=\"DRY_RUN='perhaps': not a boolean" in out
    assert ("config-problem number=2 variables=INVOICE_SMTP_PORT message=\"INVOICE_SMTP_PORT='x': "
            "not a whole number") in out
    assert "config-problem number=3 variables=INVOICE_ENABLE_STRIPE,STRIPE_API_KEY" in out
    assert "config-problem number=4 variables=JOB_COMPLETION_INDEX,SHARD_COUNT" in out
    assert out.strip().splitlines()[-1] == ("error: configuration is invalid: 4 problems, numbered above and "
                                            "marked in the table")
    assert "more" not in out  # nothing hidden, no pointer to itself

    rich = run("config", "--rich", **BROKEN)
    assert rich.exit_code == ExitCode.CONFIG
    assert "configuration is invalid: 4 problems" in rich.output
    assert "  3. INVOICE_ENABLE_STRIPE is on but STRIPE_API_KEY is not set" in rich.output
    marked = [line for line in rich.output.splitlines() if "✗" in line]
    assert [line.split()[1] for line in marked] == ["DRY_RUN", "INVOICE_ENABLE_STRIPE", "STRIPE_API_KEY",
                                                    "INVOICE_SMTP_PORT", "SHARD_COUNT", "JOB_COMPLETION_INDEX"]


def test_other_commands_name_the_first_problem_and_send_to_billing_config(clean_env) -> None:
    result = run("schedule", **BROKEN)
    assert result.exit_code == ExitCode.CONFIG
    assert ("configuration error: DRY_RUN='perhaps': not a boolean: use true/false, 1/0 or yes/no "
            "(and 3 more; run `billing config` to see them all)") in result.output


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


@pytest.mark.parametrize("password", ["db/SECRET-pw", "db?SECRET-pw", "db#SECRET-pw"])
def test_billing_config_never_prints_a_database_password_holding_a_slash_question_mark_or_hash(
        clean_env, db_url, password) -> None:
    url = url_with_raw_password(db_url, password)
    # A working URL: SQLAlchemy reads the password up to the '@' (the test server trusts any password).
    assert run("status", DATABASE_URL=url).exit_code == 0

    for args in (["config"], ["config", "--json"], ["config", "--rich"]):
        result = run(*args, DATABASE_URL=url)
        assert result.exit_code == 0, result.output
        assert "SECRET-pw" not in result.output, f"billing {' '.join(args)} printed the password"


def test_a_database_password_holding_an_at_sign_is_never_printed_even_in_part(clean_env) -> None:
    url = "postgresql://billing:db-SECRET@pw-TAIL@127.0.0.1:5432/billing"
    for args in (["aggregate-hourly"], ["config"], ["status", "--json"]):
        result = run(*args, DATABASE_URL=url)
        assert "pw-TAIL" not in result.output, f"billing {' '.join(args)} printed part of the password"


def test_a_shared_json_flag_is_refused_by_a_command_that_has_no_json_form(clean_env) -> None:
    result = runner.invoke(app, ["--json", "demo"])
    assert result.exit_code == ExitCode.USAGE and "`billing demo` has no JSON output" in result.stderr


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


def test_an_explicit_window_is_exactly_that_window_and_the_start_line_says_why(clean_env, db_url, engine) -> None:
    with engine.begin() as s:
        add_org(s, "org-a")
        add_org(s, "org-b")
        add_event(s, "org-a", "api_calls", "1", utc(2024, 1, 31, 20, 10))
        add_event(s, "org-b", "api_calls", "2", utc(2024, 1, 31, 23, 10))
        add_event(s, "org-b", "storage_gb", "3", utc(2024, 1, 31, 18, 10))  # outside the window

    result = run("aggregate-hourly", "--from", "2024-01-31T20", "--to", "2024-01-31T23", DATABASE_URL=db_url,
                 AGGREGATE_LOOKBACK_HOURS="2")
    assert result.exit_code == 0, result.output
    start = result.output.splitlines()[0]
    assert "window_start=2024-01-31T20:00Z window_end=2024-02-01T00:00Z hours=4" in start
    assert 'why="--from 2024-01-31T20 --to 2024-01-31T23"' in start
    # Two organizations had usage in the window, never in the same hour: both are counted.
    assert "summary job=aggregate-hourly hours=4 failed_hours=0 organizations=2 events=2 " in result.output
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM usage_hourly WHERE metric = 'storage_gb'").scalar_one() == 0

    widened = run("aggregate-hourly", "--hour", "2024-01-31T20", "--lookback", "2", DATABASE_URL=db_url)
    assert widened.exit_code == 0, widened.output
    assert "hours=3" in widened.output.splitlines()[0]
    assert 'why="--hour 2024-01-31T20, and the 2 hour(s) before it for late events (--lookback=2)"' in widened.output


def test_json_log_lines_carry_typed_values(clean_env, db_url, engine) -> None:
    import json

    with engine.begin() as s:
        add_org(s, "org-a")
        add_event(s, "org-a", "api_calls", "1.5", utc(2024, 1, 31, 13, 10))
    result = run("aggregate-hourly", "--hour", "2024-01-31T13", "--log-format", "json", DATABASE_URL=db_url)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    start, summary = records[0], records[-1]
    assert start["event"] == "start" and start["dry_run"] is False and start["hours"] == 1
    assert summary["event"] == "summary" and summary["outcome"] == "succeeded"
    assert isinstance(summary["seconds"], float) and summary["organizations"] == 1 and summary["dry_run"] is False


def scheduled_aggregation(db_url: str) -> tuple[dict, str]:
    """The scheduled aggregate-hourly (no --hour, lookback 2): its summary's fields and its first line."""
    result = run("aggregate-hourly", DATABASE_URL=db_url, AGGREGATE_LOOKBACK_HOURS="2")
    assert result.exit_code == 0, result.output
    start = result.output.splitlines()[0]
    summary = next(line for line in result.output.splitlines() if line.startswith("summary "))
    return dict(part.split("=", 1) for part in summary.split()[1:] if "=" in part), start


def test_the_scheduled_run_does_not_roll_up_again_hours_whose_events_all_arrived_before_their_roll_up(
        clean_env, db_url, engine) -> None:
    """Events that arrive as they occur, within the hour of margin before the last run: the hours
    they belong to are unchanged, and the next run reads only its own hour. An event that arrives
    afterwards, even one stamped before that run (a slow producer transaction), is still found."""
    from datetime import timedelta

    from billing_cli.periods import HOUR, floor_hour, format_hour, utc_now

    target = floor_hour(utc_now()) - HOUR  # the previous full hour: what the scheduled run rolls up
    recently = utc_now() - timedelta(minutes=10)  # received within the margin of the next run
    with engine.begin() as s:
        add_org(s, "org-a")
        for back in (0, 1, 2):
            add_event(s, "org-a", "api_calls", "1", target - back * HOUR + timedelta(minutes=5), received_at=recently)

    first, start = scheduled_aggregation(db_url)  # the two lookback hours were never rolled up: they are now
    assert first["hours"] == "3" and first["events"] == "3", first

    second, start = scheduled_aggregation(db_url)  # every event arrived within the margin, and nothing changed
    assert second["hours"] == "1" and second["events"] == "1" and "late_hours" not in start, start

    with engine.begin() as s:  # committed after the last run, stamped before it
        add_event(s, "org-a", "api_calls", "5", target - HOUR + timedelta(minutes=30),
                  received_at=utc_now() - timedelta(minutes=5))
    third, start = scheduled_aggregation(db_url)
    assert f"late_hours={format_hour(target - HOUR)} " in start and third["hours"] == "2", start
    with engine.connect() as conn:
        assert conn.execute(text("SELECT quantity FROM usage_hourly WHERE hour_start = :h"),
                            {"h": target - HOUR}).scalar_one() == 6

    fourth, start = scheduled_aggregation(db_url)  # rolled up again: unchanged since
    assert fourth["hours"] == "1" and "late_hours" not in start, start


def test_the_scheduled_run_rolls_up_a_lookback_hour_again_only_when_it_changed(clean_env, db_url, engine) -> None:
    from datetime import timedelta

    from billing_cli.periods import HOUR, floor_hour, format_hour, utc_now

    target = floor_hour(utc_now()) - HOUR  # the previous full hour: what the scheduled run rolls up
    long_ago = utc_now() - timedelta(hours=6)  # events backfilled hours ago: not late arrivals
    with engine.begin() as s:
        add_org(s, "org-a")
        for back in (0, 1, 2):
            add_event(s, "org-a", "api_calls", "1", target - back * HOUR + timedelta(minutes=5),
                      received_at=long_ago)

    first, start = scheduled_aggregation(db_url)  # the two lookback hours were never rolled up: they are now
    assert first["hours"] == "3" and first["events"] == "3", first
    assert f"late_hours={format_hour(target - 2 * HOUR)},{format_hour(target - HOUR)}" in start

    second, start = scheduled_aggregation(db_url)  # nothing changed: only the previous hour is read again
    assert second["hours"] == "1" and second["events"] == "1" and "late_hours" not in start, start
    assert "older hours whose events changed since they were rolled up" in start

    with engine.begin() as s:  # a late event for two hours ago
        add_event(s, "org-a", "api_calls", "5", target - 2 * HOUR + timedelta(minutes=30))
    third, start = scheduled_aggregation(db_url)
    assert f"late_hours={format_hour(target - 2 * HOUR)}" in start and third["hours"] == "2", start
    with engine.connect() as conn:
        assert conn.execute(text("SELECT quantity FROM usage_hourly WHERE hour_start = :h"),
                            {"h": target - 2 * HOUR}).scalar_one() == 6


@pytest.mark.parametrize("log_format", ["plain", "json", "rich"])
def test_a_reader_that_goes_away_does_not_stop_the_run(clean_env, db_url, engine, log_format) -> None:
    """`billing aggregate-hourly … | head -1`: once the reader is gone the output is dropped, but the
    run goes on to its end and its real exit code; before, the first line written after it killed the
    run (exit 1, "unexpected error: BrokenPipeError" in job_runs and the failure notified)."""
    with engine.begin() as s:
        add_org(s, "org-a")
        add_event(s, "org-a", "api_calls", "2", utc(2024, 1, 31, 13, 10))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line: no race with it
    try:
        proc = subprocess.run([*BILLING, "aggregate-hourly", "--from", "2024-01-31T10", "--to", "2024-01-31T14",
                               "--log-format", log_format], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              env=billing_subprocess_env(DATABASE_URL=db_url), timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT status, message FROM job_runs")).all()
        rolled_up = conn.execute(text("SELECT sum(quantity) FROM usage_hourly")).scalar()
    assert [tuple(r) for r in runs] == [("succeeded", None)]
    assert rolled_up == 2


def test_a_dotenv_saved_in_another_encoding_is_a_configuration_error_naming_its_line(clean_env) -> None:
    """A .env edited in a Latin-1 editor: exit 3 naming the file and line, from `billing config` and from a
    job alike; before, every command (`billing config` too) died with a UnicodeDecodeError traceback."""
    (clean_env / ".env").write_bytes(b"DRY_RUN=true\nINVOICE_SELLER_NAME=Soci\xe9t\xe9 G\xe9n\xe9rale\n")
    for command in (["config"], ["aggregate-hourly"]):
        result = run(*command)
        assert result.exit_code == ExitCode.CONFIG, result.output
        assert ".env: line 2 is not UTF-8 text" in result.output and "save the file as UTF-8" in result.output
        assert "Traceback" not in result.output


def test_a_setting_that_is_not_utf8_is_a_configuration_error(clean_env) -> None:
    """A variable exported from a Latin-1 shell (the seller's name, printed on every invoice): exit 3
    naming it, before any work; before, it was accepted, `billing config` printed the raw byte and
    the invoices' PDFs and e-mails met it halfway through the run."""
    for command in (["config"], ["aggregate-hourly"]):
        proc = subprocess.run([*BILLING, *command], capture_output=True, timeout=60, cwd=clean_env,
                              env=billing_subprocess_env(INVOICE_SELLER_NAME=b"Soci\xe9t\xe9 SA", DATABASE_URL=
                                                         "postgresql://billing:db-SECRET-pw@127.0.0.1:1/billing"))
        output = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == ExitCode.CONFIG, output
        assert "INVOICE_SELLER_NAME='Soci\\udce9t\\udce9 SA'" in output and "not UTF-8 text" in output
        assert "\ufffd" not in output  # no raw byte written out


def test_a_misspelt_setting_in_dotenv_is_a_configuration_error(clean_env) -> None:
    """`DRYRUN=true` in .env: before, silently ignored, so the "dry" run issued and delivered real
    invoices (and a misspelt INVOICE_ENABLE_STRIPE left Stripe off). A key close to a setting's name
    is now refused (exit 3) with the name it resembles; other tools' keys in the file stay allowed."""
    (clean_env / ".env").write_text("DRYRUN=true\nINVOICE_ENABLE_STIPE=true\nCOMPOSE_PROJECT_NAME=billing\n")
    for command in (["config"], ["invoice-monthly"]):
        result = run(*command)
        assert result.exit_code == ExitCode.CONFIG, result.output
        assert "DRYRUN (in .env) is not a setting: did you mean DRY_RUN?" in result.output
        assert "Traceback" not in result.output
    assert "INVOICE_ENABLE_STIPE (in .env) is not a setting: did you mean INVOICE_ENABLE_STRIPE?" in run("config").output
    (clean_env / ".env").write_text("DRY_RUN=true\nCOMPOSE_PROJECT_NAME=billing\nPGPASSWORD=x\n")
    assert run("config").exit_code == ExitCode.OK


@pytest.mark.parametrize("url", [
    "postgresql://billing:db-SECRET-pw@db1:5432,db2:5432/billing?target_session_attrs=read-write",
    "postgresql://billing:db-SECRET-pw@db1,db2/billing",
    "postgresql://billing:db-SECRET-pw,/x@db1,db2:5432/billing",  # a raw ',' and '/' in the password too
])
def test_several_hosts_written_libpq_s_way_get_the_form_that_works(clean_env, url) -> None:
    """libpq's `host1:port,host2:port` (a primary and its standby): SQLAlchemy cannot read it; the
    error now says so and gives the form it reads (which connects: ?host=h1:p&host=h2:p); before,
    it said "the port is not a number", sending the operator after a port that was right."""
    result = run("aggregate-hourly", DATABASE_URL=url)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert "several hosts" in result.output and "?host=db1:5432&host=db2:5432" in result.output, result.output
    assert "port is not a number" not in result.output and "db-SECRET-pw" not in result.output


@pytest.mark.parametrize("args", [["schedule", "--format", "k8s"], ["schedule", "--format", "crontab"],
                                  ["exit-codes", "--plain"], ["config", "--plain"]])
def test_a_command_whose_reader_is_gone_exits_with_its_own_code(clean_env, args) -> None:
    """`billing schedule --format k8s | head -0`: exit 0, nothing on stderr; before, `schedule` exited 1,
    the code of a bug."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([*BILLING, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              cwd=clean_env, env=billing_subprocess_env(BILLING_ENV_FILE="/dev/null"))
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")
