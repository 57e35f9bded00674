"""Plans as code: the TOML format, its validation (file, line, plan and price named), the store."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.db.plan_store import load_plans, save_plans
from billing_cli.errors import ExitCode
from billing_cli.plan_file import PlanFileError, load_plan_file, parse_plans
from billing_cli.pricing import Tier

ROOT = Path(__file__).resolve().parent.parent
DEMO_PLANS = ROOT / "billing_cli" / "jobs" / "demo_plans.toml"

GOOD = """
[[plan]]
id = "pro"
name = "Pro"
currency = "USD"
base_fee = 49.00

  [[plan.price]]
  metric = "api_calls"
  model = "graduated"
  included = 1000
  tiers = [
    { up_to = 10000, unit_price = 0.01 },
    { up_to = 100000, unit_price = "0.008", flat_fee = 5 },
    { unit_price = 0.005 },
  ]
"""


def test_a_valid_file_parses_exactly() -> None:
    (pro,) = parse_plans(GOOD)
    assert (pro.id, pro.name, pro.currency, pro.base_fee) == ("pro", "Pro", "USD", D("49.00"))
    (price,) = pro.prices
    assert price.model == "graduated" and price.included == D(1000) and price.description == "API calls"
    assert price.tiers == (Tier(D(10000), D("0.01")), Tier(D(100000), D("0.008"), D(5)), Tier(None, D("0.005")))
    assert isinstance(price.tiers[0].unit_price, D)  # TOML floats are read as exact decimals


def test_the_documented_example_is_valid() -> None:
    plans = load_plan_file(DEMO_PLANS)
    assert {p.id for p in plans} == {"starter", "growth", "europe", "payg"}
    assert {price.model for p in plans for price in p.prices} == {"per_unit", "graduated", "volume", "package"}


@pytest.mark.parametrize("change,message", [
    (('model = "graduated"', 'model = "stairstep"'), r"plans.toml:10: plan 'pro', price 'api_calls': unknown model 'stairstep'"),
    (("unit_price = 0.01 }", "unit_price = -0.01 }"), r":12: plan 'pro', price 'api_calls': tier 1: `unit_price` must not be negative"),
    (("up_to = 100000,", "up_to = 5000,"), r":12: .*tiers overlap or are not in increasing order: tier 2 ends at 5000"),
    (("up_to = 100000,", "up_to = 10000,"), r"tiers overlap or are not in increasing order"),
    (('currency = "USD"', 'currency = "DOLLARS"'), r"plans.toml:5: plan 'pro': 'DOLLARS' is not an ISO 4217"),
    (('currency = "USD"', 'currency = "usd"'), r"plans.toml:5: plan 'pro': 'usd' is not an ISO 4217 currency code "
                                               r"\(did you mean USD\?\)"),
    (('currency = "USD"', 'currency = "EURO"'), r"'EURO' is not an ISO 4217 currency code \(did you mean EUR\?\)"),
    (('model = "graduated"', 'model = "graduate"'), r":10: .*unknown model 'graduate': did you mean 'graduated'\?"),
    (("base_fee = 49.00", "base_fee = 49.001"), r"plans.toml:6: plan 'pro': `base_fee` = 49.001 has more decimals than USD"),
    (("base_fee = 49.00", "base_fee = -1"), r"`base_fee` must not be negative"),
    (("{ unit_price = 0.005 },", "{ up_to = 200000, unit_price = 0.005 },"), r"the last tier must have no `up_to`"),
    (("included = 1000", "includes = 1000"),
     r":11: plan 'pro', price 'api_calls': unknown key 'includes' \(did you mean 'included'\?\)"),
    (("base_fee = 49.00", "base_fees = 49.00"),
     r":6: plan 'pro': unknown key 'base_fees' \(did you mean 'base_fee'\?\)"),
    (("base_fee = 49.00", "colour = 'blue'"), r":6: plan 'pro': unknown key 'colour'$"),
    (('id = "pro"', 'id = "pro plan!"'), r"`id` must be letters"),
    (('name = "Pro"', ''), r"`name` is required"),
    (('name = "Pro"', r'name = "Pro\u0000"'), r"plans.toml:4: plan 'pro': `name` must be text without control characters"),
    (('included = 1000', r'description = "API\tcalls"'),
     r":11: plan 'pro', price 'api_calls': `description` must be one line of text, without control characters"),
])
def test_invalid_files_name_the_line_plan_and_price(change, message) -> None:
    old, new = change
    assert old in GOOD
    with pytest.raises(PlanFileError, match=message):
        parse_plans(GOOD.replace(old, new, 1))


MANY_ERRORS = """
[[plan]]
id = "pro"
name = "Pro"
currency = "usd"
colour = "blue"

  [[plan.price]]
  metric = "api_calls"
  model = "per_unit"
  unit_prise = 0.01

  [[plan.price]]
  metric = "storage_gb"
  model = "graduate"
  tiers = [ { up_to = 10, unit_price = 1 }, { unit_price = -1 } ]

[[plan]]
id = "team"
name = "Team"
currency = "EUR"
base_fee = 10.001

[[plan]]
id = "fine"
name = "Fine"
currency = "EUR"
base_fee = 10
"""


def test_every_error_of_a_file_is_reported_at_once_in_file_order() -> None:
    with pytest.raises(PlanFileError) as err:
        parse_plans(MANY_ERRORS)
    assert str(err.value).splitlines() == [
        "plans.toml: 7 errors:",
        "  plans.toml:5: plan 'pro': 'usd' is not an ISO 4217 currency code (did you mean USD?)",
        "  plans.toml:6: plan 'pro': unknown key 'colour'",
        "  plans.toml:8: plan 'pro', price 'api_calls': a per_unit price needs `unit_price`",
        "  plans.toml:11: plan 'pro', price 'api_calls': unknown key 'unit_prise' (did you mean 'unit_price'?)",
        "  plans.toml:15: plan 'pro', price 'storage_gb': unknown model 'graduate': did you mean 'graduated'? "
        "use one of per_unit, graduated, volume, package",
        "  plans.toml:16: plan 'pro', price 'storage_gb': tier 2: `unit_price` must not be negative (got -1)",
        "  plans.toml:22: plan 'team': `base_fee` = 10.001 has more decimals than EUR allows",
    ]


def test_plans_apply_prints_every_error_and_applies_nothing(clean_env, db_url, engine, tmp_path) -> None:
    runner = CliRunner()
    bad = tmp_path / "plans.toml"
    bad.write_text(MANY_ERRORS)
    result = runner.invoke(app, ["plans", "apply", str(bad)], env={"DATABASE_URL": db_url})
    assert result.exit_code == ExitCode.USAGE
    assert f"error: {bad}: 7 errors:" in result.output
    assert "(did you mean USD?)" in result.output and "(did you mean 'unit_price'?)" in result.output
    assert f"  {bad}:22: plan 'team'" in result.output
    with engine.connect() as conn:  # the valid plan "fine" neither: all or nothing
        assert conn.execute(text("SELECT count(*) FROM price_plans")).scalar_one() == 0

    good = tmp_path / "good.toml"
    good.write_text(MANY_ERRORS[MANY_ERRORS.index('[[plan]]\nid = "fine"'):])
    applied = runner.invoke(app, ["plans", "apply", str(good)], env={"DATABASE_URL": db_url})
    assert applied.exit_code == 0 and "plan id=fine result=created" in applied.output


def test_other_structural_errors() -> None:
    with pytest.raises(PlanFileError, match="not valid TOML"):
        parse_plans("[[plan]\nid=")
    with pytest.raises(PlanFileError, match="no \\[\\[plan\\]\\] tables"):
        parse_plans("")
    with pytest.raises(PlanFileError, match=r"plan #1: plans go in \[\[plan\]\] tables"):
        parse_plans("plan = [1]")
    with pytest.raises(PlanFileError, match="defined twice"):
        parse_plans(GOOD + GOOD)
    with pytest.raises(PlanFileError, match="priced twice"):
        parse_plans(GOOD + GOOD[GOOD.index("  [[plan.price]]"):])
    with pytest.raises(PlanFileError, match="a package price needs `package_size` > 0"):
        parse_plans('[[plan]]\nid="a"\nname="A"\ncurrency="EUR"\n[[plan.price]]\nmetric="m"\nmodel="package"\n'
                    'unit_price=1\n')


def test_store_round_trip_and_idempotent_upsert(transactions) -> None:
    plans = load_plan_file(DEMO_PLANS)
    with transactions() as conn:
        first = save_plans(conn, plans)
        again = save_plans(conn, plans)
        loaded = load_plans(conn)
    assert sorted(first.created) == ["europe", "growth", "payg", "starter"] and not first.updated
    assert sorted(again.unchanged) == ["europe", "growth", "payg", "starter"] and not again.created
    assert {p.id: p for p in plans} == loaded

    changed = parse_plans(GOOD.replace('id = "pro"', 'id = "starter"').replace("49.00", "59.00"))
    with transactions() as conn:
        result = save_plans(conn, changed)
        starter = load_plans(conn, ["starter"])["starter"]
    assert result.updated == ["starter"] and starter.base_fee == D("59.00") and len(starter.prices) == 1


def test_a_nul_in_a_plan_name_is_a_usage_error_naming_its_line_never_a_database_traceback(
        clean_env, db_url, engine, tmp_path) -> None:
    # TOML allows "\u0000"; PostgreSQL's text does not: it was a psycopg DataError traceback, exit 1.
    bad = tmp_path / "plans.toml"
    bad.write_text(GOOD.replace('name = "Pro"', 'name = "Pro\\u0000"'))
    result = CliRunner().invoke(app, ["plans", "apply", str(bad)], env={"DATABASE_URL": db_url})
    assert result.exit_code == ExitCode.USAGE, result.output
    assert f"{bad}:4: plan 'pro': `name` must be text without control characters" in result.output
    assert "Traceback" not in result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM price_plans")).scalar_one() == 0
