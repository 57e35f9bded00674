"""Configuration: parsing, precedence (env over .env over defaults), validation, masking."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from billing_cli.config import (VARIABLES, Secret, Settings, config_problems, env_example, load_settings, mask,
                                mask_url_password, read_raw_config, readme_table)
from billing_cli.config.docs import with_readme_table
from billing_cli.errors import ConfigError, ExitCode

ROOT = Path(__file__).resolve().parent.parent
NO_FILE = Path("/nonexistent/.env")


def settings(env: dict[str, str], env_file: Path = NO_FILE):
    return load_settings({"DATABASE_URL": "postgresql://u@h/db", **env}, env_file)


@pytest.mark.parametrize("text,expected", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False),
])
def test_booleans_accept_the_documented_spellings(text: str, expected: bool) -> None:
    assert settings({"DRY_RUN": text}).dry_run is expected


@pytest.mark.parametrize("text", ["maybe", "on", "2", "tru"])
def test_an_unknown_boolean_names_the_variable_and_the_value(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings({"INVOICE_ENABLE_S3": text})
    assert "INVOICE_ENABLE_S3" in str(err.value) and repr(text) in str(err.value)
    assert err.value.exit_code == ExitCode.CONFIG


def test_defaults() -> None:
    s = load_settings({}, NO_FILE)
    assert s.database_url is None and s.uses_embedded_database
    assert (s.dry_run, s.s3_enabled, s.stripe_enabled, s.email_enabled) == (False, False, False, False)
    assert s.run_schedule == "0 0 0 1 * *" and s.smtp_port == 587 and s.aggregate_lookback_hours == 2
    assert s.sources["DRY_RUN"] == "default"


def test_real_environment_wins_over_dotenv(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DRY_RUN=true\nPROCESS_MONTH=2024-02\nINVOICE_S3_REGION=eu-west-1\n")
    s = load_settings({"DATABASE_URL": "postgresql://u@h/db", "PROCESS_MONTH": "2024-01"}, env_file)
    assert s.process_month == "2024-01" and s.sources["PROCESS_MONTH"] == "env"
    assert s.dry_run is True and s.sources["DRY_RUN"] == ".env"
    assert s.s3_region == "eu-west-1"


def test_a_bad_value_in_dotenv_says_it_came_from_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PROCESS_MONTH=January\n")
    with pytest.raises(ConfigError, match=r"PROCESS_MONTH='January' \(from .*\.env\): not a month"):
        load_settings({"DATABASE_URL": "postgresql://u@h/db"}, env_file)


@pytest.mark.parametrize("env,missing", [
    ({"INVOICE_ENABLE_S3": "true"}, "INVOICE_S3_BUCKET"),
    ({"INVOICE_ENABLE_STRIPE": "yes"}, "STRIPE_API_KEY"),
    ({"INVOICE_ENABLE_EMAIL": "1"}, "INVOICE_SMTP_HOST"),
    ({"INVOICE_ENABLE_EMAIL": "1", "INVOICE_SMTP_HOST": "smtp.example.com"}, "INVOICE_SMTP_FROM"),
    ({"NOTIFY_ON_COMPLETION": "true"}, "NOTIFY_EMAIL"),
])
def test_an_enabled_feature_with_a_missing_setting_is_a_configuration_error(env, missing) -> None:
    with pytest.raises(ConfigError, match=f"is on but {missing} is not set"):
        settings(env)


def test_complete_feature_settings_are_accepted() -> None:
    s = settings({"INVOICE_ENABLE_S3": "true", "INVOICE_S3_BUCKET": "invoices",
                  "INVOICE_ENABLE_STRIPE": "true", "STRIPE_API_KEY": "sk_test_abc123456789",
                  "INVOICE_ENABLE_EMAIL": "true", "INVOICE_SMTP_HOST": "smtp.example.com",
                  "INVOICE_SMTP_PORT": "2525", "INVOICE_SMTP_FROM": "Billing <billing@example.com>",
                  "INVOICE_SELLER_NAME": "Nimbus Metering GmbH", "INVOICE_SELLER_ADDRESS": "Hauptstrasse 1"})
    assert s.s3_bucket == "invoices" and s.smtp_port == 2525
    assert s.stripe_api_key is not None and s.stripe_api_key.reveal() == "sk_test_abc123456789"


@pytest.mark.parametrize("env,fragment", [
    ({"INVOICE_SMTP_PORT": "smtp"}, "INVOICE_SMTP_PORT='smtp'"),
    ({"INVOICE_SMTP_PORT": "70000"}, "out of range"),
    ({"PROCESS_MONTH": "2024-13"}, "not a month"),
    ({"DATABASE_URL": "mysql://u@h/db"}, "not a PostgreSQL URL"),
    ({"RUN_SCHEDULE": "every day"}, "use six fields, seconds first"),
    ({"RUN_SCHEDULE": "30 0 0 1 * *"}, "the seconds field must be 0"),
    ({"NOTIFY_EMAIL": "not-an-address"}, "not an e-mail address"),
])
def test_malformed_values_are_named(env, fragment) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        settings(env)


@pytest.mark.parametrize("url,fragment", [
    ("postgresql://billing:db-SECRET@pw-TAIL@db:5432/billing", "percent-encode the password (@ as %40"),
    ("postgresql://billing:db-SECRET@pw:TAIL@db:5432/billing", "percent-encode the password"),
    ("postgresql://billing:db-SECRET@db:54x2/billing", "the port is not a number"),
    ("postgresql://billing:db-SECRET@db:99999/billing", "the port 99999 is out of range"),
    ("postgresql://billing:db-SECRET@[::1/billing", "an IPv6 host opened with '[' is not closed"),
    ("postgresql://billing:db-SECRET@db/billing?sslmod=require", "unknown connection option 'sslmod' in the query "
                                                                 "(did you mean 'sslmode'?)"),
    ("postgresql://billing:db-SECRET@db/billing?sslmode=bogus", "sslmode='bogus' in the query: use disable"),
    ("postgresql://billing:db-SECRET@db/billing?connect_timeout=ten", "connect_timeout='ten' in the query is not"),
])
def test_a_database_url_libpq_would_refuse_or_misread_is_named_without_its_password(url, fragment) -> None:
    with pytest.raises(ConfigError) as err:
        settings({"DATABASE_URL": url})
    assert str(err.value).startswith("configuration error: DATABASE_URL='postgresql://billing:****@")
    assert fragment in str(err.value)
    assert "SECRET" not in str(err.value) and "TAIL" not in str(err.value)


@pytest.mark.parametrize("url", [
    "postgresql://billing:p%40ss@db:5432/billing?sslmode=verify-full&connect_timeout=5",
    "postgresql://billing:db/pw?x#y@db/billing",  # SQLAlchemy reads a password up to the '@'
    "postgresql://billing@tenant:pw@db/billing",  # an '@' in the user name alone is read right
    "postgres:///billing?host=/var/run/postgresql",
    "postgresql://billing@[::1]:5432/billing?host=a&host=b&target_session_attrs=read-write",
])
def test_a_usable_database_url_is_accepted(url) -> None:
    assert settings({"DATABASE_URL": url}).database_url is not None


def test_every_problem_is_found_with_the_variables_it_is_about() -> None:
    raw = read_raw_config({"DATABASE_URL": "mysql://u@h/db", "INVOICE_ENABLE_S3": "yes", "INVOICE_SMTP_PORT": "0",
                           "INVOICE_SMTP_USERNAME": "mailer", "NOTIFY_ON_COMPLETION": "true",
                           "NOTIFY_EMAIL": "nobody", "SHARD_COUNT": "many",
                           "INVOICE_SELLER_NAME": "Placeholder Corp"}, NO_FILE)
    problems = config_problems(raw)
    assert [p.names for p in problems] == [
        ("DATABASE_URL",), ("NOTIFY_EMAIL",), ("INVOICE_SMTP_PORT",), ("SHARD_COUNT",),
        ("INVOICE_ENABLE_S3", "INVOICE_S3_BUCKET"),
        # NOTIFY_EMAIL is set, only invalid: not reported as missing as well
        ("NOTIFY_ON_COMPLETION", "INVOICE_SMTP_HOST"), ("NOTIFY_ON_COMPLETION", "INVOICE_SMTP_FROM"),
        ("INVOICE_SMTP_USERNAME", "INVOICE_SMTP_PASSWORD"),
        # a delivery is on: the seller's address is still the placeholder (the name is set)
        ("INVOICE_SELLER_ADDRESS",),
    ]
    with pytest.raises(ConfigError, match=r"^configuration error: DATABASE_URL='mysql://u@h/db': not a PostgreSQL "
                                          r"URL.* \(and 8 more; run `billing config` to see them all\)$"):
        load_settings({"DATABASE_URL": "mysql://u@h/db", "INVOICE_ENABLE_S3": "yes", "INVOICE_SMTP_PORT": "0",
                       "INVOICE_SMTP_USERNAME": "mailer", "NOTIFY_ON_COMPLETION": "true",
                       "NOTIFY_EMAIL": "nobody", "SHARD_COUNT": "many"}, NO_FILE)
    assert config_problems(read_raw_config({}, NO_FILE)) == []


def test_embedded_database_is_refused_under_kubernetes_and_on_request() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is not set.*Kubernetes"):
        load_settings({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, NO_FILE)
    with pytest.raises(ConfigError, match="BILLING_REQUIRE_DATABASE_URL"):
        load_settings({"BILLING_REQUIRE_DATABASE_URL": "true"}, NO_FILE)
    assert load_settings({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "DATABASE_URL": "postgresql://u@h/d",
                          "INVOICE_SELLER_NAME": "Nimbus Metering GmbH", "INVOICE_SELLER_ADDRESS": "Hauptstrasse 1"},
                         NO_FILE).require_database_url


def test_masking() -> None:
    assert mask("STRIPE_API_KEY", "sk_test_51HxYzSECRET") == "sk_t****"
    assert mask("INVOICE_SMTP_PASSWORD", "hunter2") == "****"
    assert mask("DATABASE_URL", "postgresql://billing:p%40ss:w0rd@db:5432/billing") == \
        "postgresql://billing:****@db:5432/billing"
    assert mask("INVOICE_S3_BUCKET", "invoices") == "invoices"
    assert mask_url_password("postgresql://billing@db/billing") == "postgresql://billing@db/billing"


@pytest.mark.parametrize("url,masked", [
    # Passwords pasted without percent-encoding: SQLAlchemy reads the password up to the '@'.
    ("postgresql://billing:db/SECRET@db:5432/billing", "postgresql://billing:****@db:5432/billing"),
    ("postgresql://billing:db?SECRET@db:5432/billing?sslmode=require",
     "postgresql://billing:****@db:5432/billing?sslmode=require"),
    ("postgresql://billing:db#SECRET@db/billing", "postgresql://billing:****@db/billing"),
    # A raw '@' in it: SQLAlchemy and libpq take the tail for the host; it is hidden all the same.
    ("postgresql://billing:db-SECRET@pw-TAIL@db:5432/billing", "postgresql://billing:****@db:5432/billing"),
    # Text that is not a usable URL still never shows the password (`billing config` prints it).
    ("postgresq://billing:SECRET@db/billing", "postgresq://billing:****@db/billing"),
    ("billing:SECRET@db/billing", "billing:****@db/billing"),
    ("postgresql://db/billing?password=SECRET@x", "postgresql://db/billing?password=****"),
    # A query key without '=' (a password pasted after '?' by mistake): hidden, unless a libpq keyword.
    ("postgresql://db/billing?SECRET", "postgresql://db/billing?****"),
    ("postgresql://db/billing?sslmode=require&SECRET#x", "postgresql://db/billing?sslmode=require&****#x"),
    ("postgresql://db/billing?keepalives&token=SECRET", "postgresql://db/billing?keepalives&token=****"),
])
def test_a_masked_url_never_shows_any_part_of_the_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked
    assert "SECRET" not in mask_url_password(url, keep_user=False)
    assert "TAIL" not in mask_url_password(url, keep_user=False)


def test_secrets_never_show_in_repr_or_str() -> None:
    s = settings({"STRIPE_API_KEY": "sk_test_TOPSECRET1234", "INVOICE_SMTP_PASSWORD": "hunter2",
                  "INVOICE_SMTP_USERNAME": "mailer",
                  "DATABASE_URL": "postgresql://billing:DBSECRET@db/billing"})
    text = repr(s) + str(s) + repr(Secret("x"))
    for secret in ("TOPSECRET", "hunter2", "DBSECRET"):
        assert secret not in text


def test_env_example_documents_every_variable() -> None:
    example = (ROOT / ".env.example").read_text()
    assert example == env_example(), "regenerate it: python -m billing_cli.config"
    for var in VARIABLES:
        assert f"{var.name}=" in example, f"{var.name} is missing from .env.example"
    from dotenv import dotenv_values

    defaults = dotenv_values(ROOT / ".env.example")
    assert load_settings({"DATABASE_URL": "postgresql://u@h/d", **defaults}, NO_FILE).run_schedule == "0 0 0 1 * *"


def test_readme_configuration_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert with_readme_table(readme) == readme, "regenerate it: python -m billing_cli.config"
    for var in VARIABLES:
        assert f"| `{var.name}` |" in readme, f"{var.name} is missing from README.md"


def test_readme_exit_codes_are_the_programs() -> None:
    from billing_cli.config.docs import exit_codes_table
    from billing_cli.errors import EXIT_CODES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert exit_codes_table() in readme, "regenerate it: python -m billing_cli.config"
    assert [doc.code for doc in EXIT_CODES] == [*(int(code) for code in ExitCode), 130]


def test_readme_table_rows_have_three_cells() -> None:
    # A `|` inside a value or text must not split the row (GitHub splits even inside `code`).
    for row in readme_table().splitlines():
        assert len(re.split(r"(?<!\\)\|", row)) == 5, row


def test_every_settings_field_is_filled_by_exactly_one_variable() -> None:
    attrs = [var.attr for var in VARIABLES if var.attr is not None]
    assert len(attrs) == len(set(attrs)), "two variables fill the same field"
    assert set(attrs) == {f.name for f in dataclasses.fields(Settings)} - {"sources"}
    # Read by the CLI before validation, so that configuration errors come out in the chosen format.
    assert {var.name for var in VARIABLES if var.attr is None} == {"LOG_FORMAT", "LOG_LEVEL"}


def _runtime_type(hint: object) -> object:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(_runtime_type(arg) for arg in typing.get_args(hint))
    return typing.get_origin(hint) or hint


def test_defaults_and_examples_have_their_field_types() -> None:
    hints = typing.get_type_hints(Settings)
    for var in VARIABLES:
        if var.attr is None:
            continue
        expected = _runtime_type(hints[var.attr])
        assert isinstance(getattr(Settings(), var.attr), expected), var.name
        if var.example is not None:
            assert isinstance(var.convert(var.example), expected), f"{var.name}: example {var.example!r}"


def test_examples_are_given_only_where_there_is_no_default() -> None:
    # .env.example shows the default when there is one; an example there would never be seen.
    assert not [var.name for var in VARIABLES if var.example is not None and var.default is not None]


def test_settings_defaults_are_the_unconfigured_program() -> None:
    assert Settings() == load_settings({}, NO_FILE)


def test_derived_fields() -> None:
    s = settings({"INVOICE_SMTP_PORT": "465", "INVOICE_SELLER_ADDRESS": " Acme | 1 Road || Town "})
    assert s.smtp_security == "ssl" and s.seller_address == ("Acme", "1 Road", "Town") and s.s3_prefix == ""
    assert settings({"INVOICE_SMTP_PORT": "465", "INVOICE_SMTP_SECURITY": "starttls"}).smtp_security == "starttls"
    assert settings({}).smtp_security == "starttls" and not settings({}).require_database_url
    assert isinstance(settings({}).database_url, Secret)


def test_only_a_missing_file_named_by_billing_env_file_is_a_problem(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here: everything comes from the environment, fine
    assert config_problems(read_raw_config({})) == []
    assert config_problems(read_raw_config({"BILLING_ENV_FILE": "/dev/null"})) == []
    assert config_problems(read_raw_config({"BILLING_ENV_FILE": ""})) == []  # empty counts as unset

    problems = config_problems(read_raw_config({"BILLING_ENV_FILE": str(tmp_path / "billing.env"),
                                                "DRY_RUN": "perhaps"}))
    assert [p.names for p in problems] == [("BILLING_ENV_FILE",), ("DRY_RUN",)]
    assert problems[0].message.startswith(f"BILLING_ENV_FILE='{tmp_path / 'billing.env'}': no such file")
    with pytest.raises(ConfigError, match="BILLING_ENV_FILE=.*: no such file"):
        load_settings({"BILLING_ENV_FILE": str(tmp_path / "billing.env"), "DATABASE_URL": "postgresql://u@h/db"})


def test_raw_config_reports_sources(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("INVOICE_S3_BUCKET=from-file\n")
    raw = read_raw_config({"DRY_RUN": "true"}, env_file)
    assert raw.values["DRY_RUN"] == ("true", "env")
    assert raw.values["INVOICE_S3_BUCKET"] == ("from-file", ".env")
    assert raw.values["INVOICE_S3_REGION"] == ("us-east-1", "default")


@pytest.mark.parametrize("env,why", [
    ({"INVOICE_ENABLE_S3": "true", "INVOICE_S3_BUCKET": "invoices"}, "INVOICE_ENABLE_S3 is on"),
    ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "DATABASE_URL": "postgresql://u@h/d"}, "running under Kubernetes"),
    # A copied .env.example: set, but still the placeholder.
    ({"INVOICE_ENABLE_STRIPE": "true", "STRIPE_API_KEY": "sk_test_abc123456789",
      "INVOICE_SELLER_NAME": "Example Cloud Ltd"}, "INVOICE_ENABLE_STRIPE is on"),
])
def test_the_placeholder_seller_never_reaches_a_customer(env, why) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(env)
    assert raised.value.exit_code == ExitCode.CONFIG
    assert str(raised.value) == (
        "configuration error: INVOICE_SELLER_NAME and INVOICE_SELLER_ADDRESS are unset or the placeholder "
        f"('Example Cloud Ltd', '1 Example Street') and {why}: set INVOICE_SELLER_NAME and INVOICE_SELLER_ADDRESS "
        "to the seller printed on invoices")
    # Only the address left: only the address is named. Nothing reaching a customer: the placeholder is fine.
    with pytest.raises(ConfigError, match="^configuration error: INVOICE_SELLER_ADDRESS is unset"):
        settings({**env, "INVOICE_SELLER_NAME": "Nimbus Metering GmbH"})
    assert settings({}).seller_name == "Example Cloud Ltd"


def test_invoice_presentation_settings_reach_the_seller() -> None:
    from billing_cli.runs.wiring import seller_from_settings

    s = settings({"INVOICE_LOCALE": "de-CH", "INVOICE_SELLER_TAX_ID": "CHE-123.456.789 MWST",
                  "INVOICE_PAYMENT_INSTRUCTIONS": "Bank transfer | IBAN CH93 0076 2011 6238 5295 7 |"})
    seller = seller_from_settings(s)
    assert (seller.locale, seller.tax_id, seller.payment_instructions, seller.pays_online) == (
        "de_CH", "CHE-123.456.789 MWST", ("Bank transfer", "IBAN CH93 0076 2011 6238 5295 7"), False)
    assert seller_from_settings(settings({})).payment_instructions == ()
    with pytest.raises(ConfigError, match="INVOICE_LOCALE='klingon': not a locale known to CLDR"):
        settings({"INVOICE_LOCALE": "klingon"})
