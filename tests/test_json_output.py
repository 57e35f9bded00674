"""Every --json document, every JSON error and every JSON log line, from real runs against a real
database, validated against its schema in schemas/ (Draft 2020-12)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import typer.main
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.db.migrate import HEAD
from billing_cli.errors import ExitCode
from tests.conftest import ROOT
from tests.data import add_event, utc

runner = CliRunner()
SCHEMAS = ROOT / "schemas"
SHARED = {"common", "error", "log-line"}  # not one command's document


def _load(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


REGISTRY = Registry().with_resources(
    (path.name, Resource.from_contents(_load(path), default_specification=DRAFT202012))
    for path in SCHEMAS.glob("*.schema.json"))


def errors_against(name: str, document: object) -> list[str]:
    validator = Draft202012Validator(_load(SCHEMAS / f"{name}.schema.json"), registry=REGISTRY)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def assert_valid(name: str, document: object) -> None:
    assert errors_against(name, document) == [], (name, document)


def run(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


def json_commands() -> dict[str, list[str]]:
    """schema name -> command path, for every command of the real app that takes --json."""
    root = typer.main.get_command(app)
    found = {}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        for path, leaf in ([[name, sub], c] for sub, c in command.commands.items()) if hasattr(command, "commands") \
                else [([name], command)]:
            if any("--json" in param.opts for param in leaf.params):
                found["-".join(path)] = path
    return found


def test_every_command_that_takes_json_has_a_schema_and_every_schema_a_command() -> None:
    commands = json_commands()
    schemas = {path.name.removesuffix(".schema.json") for path in SCHEMAS.glob("*.schema.json")}

    assert {"invoice-monthly", "aggregate-hourly", "reconcile", "legacy-run", "runs", "status", "schedule",
            "config", "plans-list", "db-current"} <= set(commands)
    assert set(commands) - schemas == set(), "a command takes --json but schemas/ has no schema for it"
    assert schemas - set(commands) - SHARED == set(), "a schema for a command that has no --json"


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.schema.json")), ids=lambda p: p.name)
def test_each_schema_is_a_valid_draft_2020_12_schema(path) -> None:
    schema = _load(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_schemas_refuse_floats_for_money_naive_times_and_unknown_keys() -> None:
    summary = {"job": "invoice-monthly", "outcome": "succeeded", "dry_run": False, "seconds": 0.5,
               "period": {"label": "2024-01", "start": "2024-01-01T00:00:00Z", "end": "2024-02-01T00:00:00Z"},
               "counts": {}, "errors": {}, "revenue": {"USD": "38.50"}, "failed": [], "message": None,
               "version": "0.1.0"}
    assert_valid("invoice-monthly", summary)
    assert errors_against("invoice-monthly", {**summary, "revenue": {"USD": 38.5}})
    assert errors_against("invoice-monthly", {**summary, "dry_run": "false"})
    assert errors_against("invoice-monthly", {**summary, "surprise": 1})
    assert errors_against("invoice-monthly", {**summary, "period": {**summary["period"], "start": "2024-01-01 00:00:00"}})
    assert errors_against("legacy-run", summary)  # the job is named


def test_real_documents_validate_against_their_schemas(clean_env, billed, engine) -> None:
    with engine.begin() as conn:
        add_event(conn, "org-1", "api_calls", "5", utc(2024, 1, 31, 13, 5))
        conn.execute(text("UPDATE organizations SET price_plan_id = 'gold' WHERE id = 'org-3'"))
    env = {"DATABASE_URL": billed}

    aggregated = runner.invoke(app, ["aggregate-hourly", "--hour", "2024-01-31T13", "--json"], env=env)
    assert aggregated.exit_code == 0, aggregated.output
    aggregation = json.loads(aggregated.stdout)
    assert_valid("aggregate-hourly", aggregation)
    assert aggregation["counts"]["events"] == 1 and aggregation["period"]["start"] == "2024-01-31T13:00:00Z"

    dry = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--dry-run", "--json"], env=env)
    assert dry.exit_code == ExitCode.PARTIAL, dry.output
    preview = json.loads(dry.stdout)
    assert_valid("invoice-monthly", preview)
    plan = {item["organization_id"]: item for item in preview["plan"]}
    assert (plan["org-1"]["action"], plan["org-1"]["total"], plan["org-3"]["action"]) == ("issue", "11.05", "refuse")

    with engine.begin() as conn:
        conn.execute(text("UPDATE organizations SET price_plan_id = 'euro' WHERE id = 'org-3'"))
    invoiced = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--json"], env=env)
    assert invoiced.exit_code == 0, invoiced.output
    summary = json.loads(invoiced.stdout)
    assert_valid("invoice-monthly", summary)
    assert "plan" not in summary and summary["revenue"] == {"EUR": "1.23", "USD": "38.55"}

    reconciled = runner.invoke(app, ["reconcile", "--month", "2024-01", "--json"], env=env)
    assert reconciled.exit_code in (ExitCode.OK, ExitCode.MISMATCH), reconciled.output
    assert_valid("reconcile", json.loads(reconciled.stdout))

    legacy = runner.invoke(app, ["legacy-run", "--json"], env={**env, "PROCESS_MONTH": "2024-01", "DRY_RUN": "true"})
    assert legacy.exit_code == 0, legacy.output
    legacy_run = json.loads(legacy.stdout)
    assert_valid("legacy-run", legacy_run)
    assert {item["action"] for item in legacy_run["plan"]} == {"skip"}

    history = json.loads(run("runs", "--json", **env).stdout)
    assert_valid("runs", history)
    assert [r["job"] for r in history] == ["legacy-run", "reconcile", "invoice-monthly", "invoice-monthly",
                                           "aggregate-hourly"]
    for record in history:
        assert record["started_at"].endswith("Z") and record["finished_at"].endswith("Z")
        assert datetime.fromisoformat(record["started_at"]).tzinfo == UTC
        assert isinstance(record["duration_seconds"], float)
    assert history[2]["revenue"] == {"EUR": "1.23", "USD": "38.55"} and history[2]["counts"]["invoiced"] == 3
    assert history[2]["period"] == {"label": "2024-01", "start": "2024-01-01T00:00:00Z", "end": "2024-02-01T00:00:00Z"}
    assert history[4]["period"]["end"] == "2024-01-31T14:00:00Z"

    health = run("--json", "status", **env)  # the shared --json before the command
    statuses = json.loads(health.stdout)
    assert_valid("status", statuses)
    by_job = {s["job"]: s for s in statuses}
    assert by_job["invoice-monthly"]["last_success"]["finished_at"].endswith("Z")
    assert isinstance(by_job["invoice-monthly"]["last_success_age_seconds"], int)


def test_operator_commands_print_documents_that_validate(clean_env, billed) -> None:
    env = {"DATABASE_URL": billed}

    plans = json.loads(run("plans", "list", "--json", **env).stdout)
    assert_valid("plans-list", plans)
    assert [p["id"] for p in plans] == ["euro", "pro"]
    pro = plans[1]
    assert (pro["base_fee"], [t["unit_price"] for t in pro["prices"][0]["tiers"]]) == ("10", ["0.01", "0.005"])

    revision = run("db", "current", "--json", **env)
    assert revision.exit_code == 0
    assert_valid("db-current", json.loads(revision.stdout))
    assert json.loads(revision.stdout)["head"] == HEAD and json.loads(revision.stdout)["up_to_date"] is True

    before = datetime.now(UTC)
    schedules = json.loads(run("schedule", "--json", "--count", "2", **env).stdout)
    assert_valid("schedule", schedules)
    assert all(len(s["next_runs"]) == 2 and datetime.fromisoformat(s["next_runs"][0]) > before for s in schedules)

    codes = json.loads(run("exit-codes", "--json").stdout)
    assert_valid("exit-codes", codes)
    assert {c["code"]: c["name"] for c in codes}[ExitCode.CONFIG] == "CONFIG"


def test_plans_list_records_name_their_plan_on_every_row(clean_env, billed) -> None:
    plain = run("plans", "list", "--plain", DATABASE_URL=billed)
    lines = run("plans", "list", "--log-format", "json", DATABASE_URL=billed)

    rows = [line for line in plain.stdout.splitlines() if line.startswith("plan ")]
    assert len(rows) == 4 and all(" plan=euro " in row or " plan=pro " in row for row in rows)
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(records) == 4 and all(r["plan"] in ("euro", "pro") for r in records)
    for record in records:
        assert_valid("log-line", record)


def test_config_json_masks_secrets_exactly_as_the_table_does(clean_env) -> None:
    secrets = ("db-pw-hunter2", "sk_live_hunter3key123456")
    env = {"DATABASE_URL": f"postgresql://billing:{secrets[0]}@db/billing", "STRIPE_API_KEY": secrets[1]}

    document = run("config", "--json", **env)
    table = run("config", "--plain", **env)

    assert document.exit_code == 0 and not any(secret in document.output for secret in secrets)
    config = json.loads(document.stdout)
    assert_valid("config", config)
    assert (config["valid"], config["problems"]) == (True, [])
    shown = {}
    for line in table.stdout.splitlines():
        if line.startswith("setting "):
            fields = dict(part.split("=", 1) for part in line.removeprefix("setting ").split(" ") if "=" in part)
            shown[fields["name"]] = fields["value"]
    by_name = {s["name"]: s for s in config["settings"]}
    assert by_name["STRIPE_API_KEY"]["value"] == shown["STRIPE_API_KEY"] and by_name["STRIPE_API_KEY"]["source"] == "env"
    assert by_name["DATABASE_URL"]["value"] == shown["DATABASE_URL"]
    assert by_name["PROCESS_MONTH"] == {"name": "PROCESS_MONTH", "value": None, "source": "default"}


def test_a_bad_configuration_under_json_is_still_one_document(clean_env) -> None:
    result = run("config", "--json", DRY_RUN="bogus", STRIPE_API_KEY="sk_live_hunter3key123456")

    assert result.exit_code == ExitCode.CONFIG
    config = json.loads(result.stdout)  # exactly one document
    assert_valid("config", config)
    assert config["valid"] is False and config["problems"][0]["message"].startswith("DRY_RUN='bogus'")
    assert config["problems"][0]["variables"] == ["DRY_RUN"]
    assert "configuration is invalid: 1 problem(s)" in result.stderr and "hunter3" not in result.output


def test_config_json_lists_every_problem_with_its_variables(clean_env) -> None:
    result = run("config", "--json", DRY_RUN="bogus", LOG_LEVEL="loud", AGGREGATE_LOOKBACK_HOURS="-1")

    assert result.exit_code == ExitCode.CONFIG
    config = json.loads(result.stdout)
    assert_valid("config", config)
    assert [p["variables"] for p in config["problems"]] == [["DRY_RUN"], ["AGGREGATE_LOOKBACK_HOURS"], ["LOG_LEVEL"]]
    assert [p["number"] for p in config["problems"]] == [1, 2, 3]


@pytest.mark.parametrize("args,env,code,message", [
    (["runs", "--job", "nope", "--json"], {}, ExitCode.USAGE, "Invalid value for '--job'"),
    (["--json", "runs", "--bogus"], {}, ExitCode.USAGE, "No such option: --bogus"),
    (["--json", "nope"], {}, ExitCode.USAGE, "No such command 'nope'"),
    (["--json", "demo"], {}, ExitCode.USAGE, "`billing demo` has no JSON output"),
    (["schedule", "--json", "--format", "k8s"], {}, ExitCode.USAGE, "--json and --format k8s"),
    (["invoice-monthly", "--month", "2024-13", "--json"], {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x"},
     ExitCode.USAGE, "--month '2024-13' is not a month"),
    (["aggregate-hourly", "--json"], {"DRY_RUN": "bogus"}, ExitCode.CONFIG, "DRY_RUN='bogus'"),
    (["legacy-run", "--json"], {"RUN_SCHEDULE": "0 0 0 1 13 *"}, ExitCode.CONFIG, "RUN_SCHEDULE='0 0 0 1 13 *'"),
    (["reconcile", "--month", "2024-01", "--json"], {"DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
                                                     "INVOICE_ENABLE_S3": "true"}, ExitCode.CONFIG, "INVOICE_S3_BUCKET"),
    (["runs", "--json"], {"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x"}, ExitCode.DATABASE_UNAVAILABLE,
     "cannot reach PostgreSQL"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_an_error_under_json_prints_an_error_document(clean_env, args, env, code, message) -> None:
    result = run(*args, **env)

    assert result.exit_code == code
    document = json.loads(result.stdout)
    assert_valid("error", document)
    assert (document["error"]["exit_code"], document["error"]["name"]) == (int(code), code.name)
    assert message in document["error"]["message"] and message in result.stderr
    assert "hunter2" not in result.output


def test_without_json_an_error_prints_nothing_on_stdout(clean_env) -> None:
    result = run("runs", "--job", "nope")
    assert result.exit_code == ExitCode.USAGE and result.stdout == "" and "Invalid value" in result.stderr


def test_a_run_that_fails_after_it_started_prints_its_summary_only(clean_env) -> None:
    result = run("aggregate-hourly", "--hour", "2024-01-31T13", "--json",
                 DATABASE_URL="postgresql://u@127.0.0.1:1/x")

    assert result.exit_code == ExitCode.DATABASE_UNAVAILABLE
    summary = json.loads(result.stdout)  # one document: the summary, no error document after it
    assert_valid("aggregate-hourly", summary)
    assert summary["outcome"] == "failed" and summary["counts"] == {}


def test_json_log_lines_of_a_real_run_validate_line_by_line(clean_env, billed, engine) -> None:
    with engine.begin() as conn:
        add_event(conn, "org-1", "api_calls", "5", utc(2024, 1, 31, 13, 5))
    env = {"DATABASE_URL": billed}

    aggregated = runner.invoke(app, ["--log-format", "json", "aggregate-hourly", "--hour", "2024-01-31T13"], env=env)
    invoiced = runner.invoke(app, ["invoice-monthly", "--month", "2024-01", "--log-format", "json", "--json"], env=env)

    assert aggregated.exit_code == 0 and invoiced.exit_code == 0
    assert_valid("invoice-monthly", json.loads(invoiced.stdout))
    lines = [json.loads(line) for line in (aggregated.stdout + invoiced.stderr).splitlines()]
    for line in lines:
        assert_valid("log-line", line)
    events = {(line.get("job"), line["event"]) for line in lines}
    assert {("aggregate-hourly", "start"), ("aggregate-hourly", "hour"), ("aggregate-hourly", "summary"),
            ("invoice-monthly", "start"), ("invoice-monthly", "organization"), ("invoice-monthly", "summary")} <= events
    organization = next(line for line in lines if line["event"] == "organization")
    assert Decimal(organization["total"]) > 0 and organization["time"].endswith("Z")
    hour = next(line for line in lines if line["event"] == "hour")
    assert isinstance(hour["seconds"], float) and hour["events"] == 1


def test_a_run_refused_by_the_lock_prints_an_error_document(clean_env, db_url, engine) -> None:
    from billing_cli.db.run_store import try_lock

    with engine.connect() as conn:
        assert try_lock(conn, "aggregate-hourly")  # another run holds the job's lock
        result = run("aggregate-hourly", "--hour", "2024-01-31T13", "--json", DATABASE_URL=db_url)

    assert result.exit_code == ExitCode.ALREADY_RUNNING
    document = json.loads(result.stdout)
    assert_valid("error", document)
    assert document["error"]["name"] == "ALREADY_RUNNING" and "billing status" in document["error"]["hint"]
