"""The validated Settings: every variable converted by its own parser, then the checks across variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError
from .raw import RawConfig, Source, read_raw_config
from .secret import Secret
from .variables import DELIVERY_FLAGS, SELLER_VARIABLES, VARIABLES, VARIABLES_BY_NAME, mask

_Class = TypeVar("_Class", bound=type)


def _fields(converted: Mapping[str, object]) -> dict[str, object]:
    """Settings' fields from each variable's converted value (None: no value), unset ones filled in."""
    fields = {var.attr: converted[var.name] for var in VARIABLES if var.attr}
    for var in VARIABLES:
        if var.attr and fields[var.attr] is None:
            fields[var.attr] = var.when_unset(fields)
    return fields


def _defaults_from_the_table(cls: _Class) -> _Class:
    """Give each field its variable's default, converted like a configured value: `Settings()` is the
    program with nothing configured, and no default is written twice."""
    mismatched = {var.attr for var in VARIABLES if var.attr} ^ (set(cls.__annotations__) - {"sources"})
    if mismatched:
        raise TypeError(f"Settings fields without a variable, or variables without a field: {sorted(mismatched)}")
    defaults = _fields({var.name: None if var.default is None else var.convert(var.default) for var in VARIABLES})
    for attr, value in defaults.items():
        setattr(cls, attr, value)
    return cls


@dataclass(frozen=True)
@_defaults_from_the_table
class Settings:
    """The validated configuration every command and job works from (fields: see VARIABLES)."""

    database_url: Secret | None
    require_database_url: bool  # also true under Kubernetes
    billing_home: Path
    run_schedule: str
    aggregate_schedule: str
    invoice_schedule: str
    reconcile_schedule: str
    process_month: str | None
    dry_run: bool
    aggregate_lookback_hours: int
    late_usage_months: int
    seller_name: str
    seller_address: tuple[str, ...]
    seller_tax_id: str | None
    seller_country: str | None
    taxes_enabled: bool
    einvoice: str  # INVOICE_EINVOICE: off or facturx
    invoice_locale: str
    payment_instructions: tuple[str, ...]
    payment_terms_days: int
    invoice_output_dir: Path | None
    notify_on_completion: bool
    notify_email: str | None
    notify_on_dry_run: bool
    notify_on_aggregate_errors: bool
    webhook_url: str | None
    webhook_secret: Secret | None
    s3_enabled: bool
    s3_bucket: str | None
    s3_region: str
    s3_endpoint_url: str | None
    s3_prefix: str
    s3_link_seconds: int
    stripe_enabled: bool
    stripe_api_key: Secret | None
    stripe_api_base: str | None
    stripe_requests_per_second: int
    email_enabled: bool
    smtp_host: str | None
    smtp_port: int
    smtp_username: str | None
    smtp_password: Secret | None
    smtp_from: str | None
    smtp_security: str
    email_attachment_max_bytes: int
    concurrency: int
    batch_size: int
    render_processes: int
    shard_count: int
    shard_index: int
    status_aggregate_max_age_hours: int
    status_invoice_grace_hours: int
    status_stuck_after_hours: int
    pushgateway_url: str | None
    delivery_max_attempts: int
    delivery_timeout_seconds: int
    delivery_max_retry_seconds: int
    delivery_breaker_failures: int
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False)

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def enabled_deliveries(self) -> tuple[str, ...]:
        """The delivery steps whose feature flag is on, in the order they run (s3, stripe, email)."""
        return tuple(step for step, flag in DELIVERY_FLAGS.items() if getattr(self, VARIABLES_BY_NAME[flag].attr))


def load_settings(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError naming the first problem found."""
    return validate(read_raw_config(environ, env_file))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, and the variables it is about (the rows `billing config` marks)."""

    message: str
    names: tuple[str, ...]

    def __str__(self) -> str:
        return self.message


def validate(raw: RawConfig) -> Settings:
    """The Settings `raw` describes, or ConfigError naming the first problem and counting the others
    (`billing config` shows them all)."""
    problems, converted = _check(raw)
    if problems:
        more = (f" (and {len(problems) - 1} more; run `billing config` to see them all)"
                if len(problems) > 1 else "")
        raise ConfigError(f"configuration error: {problems[0]}{more}")

    fields = _fields(converted)
    # The image ships no embedded PostgreSQL and pods keep no disk, whatever BILLING_REQUIRE_DATABASE_URL says.
    fields["require_database_url"] = fields["require_database_url"] or raw.under_kubernetes
    sources = {name: source for name, (_, source) in raw.values.items()}
    return Settings(**fields, sources=sources)  # type: ignore[arg-type]  # test_config checks the types


def config_problems(raw: RawConfig) -> list[Problem]:
    """Everything wrong with the configuration `raw` describes, in the order of VARIABLES, then the
    checks across variables; empty when it is valid."""
    return _check(raw)[0]


def _check(raw: RawConfig) -> tuple[list[Problem], dict[str, object]]:
    converted: dict[str, object] = {}  # a variable whose value does not parse is left out
    problems: list[Problem] = []
    if raw.env_file_problem:  # first: the problems after it may come from the settings it holds
        problems.append(Problem(raw.env_file_problem, ("BILLING_ENV_FILE",)))
    for key, guess in raw.misspelt:
        problems.append(Problem(f"{key} (in {raw.env_file}) is not a setting: did you mean {guess}? Rename it, or "
                                "remove it", (guess,)))
    for var in VARIABLES:
        text, source = raw.values[var.name]
        if text is None:
            converted[var.name] = None
            continue
        try:
            converted[var.name] = var.convert(text)
        except ValueError as exc:
            where = f" (from {raw.env_file})" if source == ".env" else ""
            problems.append(Problem(f"{var.name}={mask(var.name, text)!r}{where}: {exc}", (var.name,)))
    problems += _missing_companions(converted, raw.under_kubernetes)
    problems += _shard_problems(converted)
    return problems, converted


def _missing_companions(converted: Mapping[str, object], under_kubernetes: bool) -> list[Problem]:
    """Settings that are only valid together: a feature turned on needs its target and credentials."""
    problems: list[Problem] = []

    def require(flag: str, *needed: str) -> None:
        if converted.get(flag):
            problems.extend(Problem(f"{flag} is on but {name} is not set: set {name} or turn {flag} off", (flag, name))
                            for name in needed if name in converted and converted[name] is None)

    require("INVOICE_ENABLE_S3", "INVOICE_S3_BUCKET")
    require("INVOICE_ENABLE_STRIPE", "STRIPE_API_KEY")
    require("INVOICE_ENABLE_EMAIL", "INVOICE_SMTP_HOST", "INVOICE_SMTP_FROM")
    require("NOTIFY_ON_COMPLETION", "NOTIFY_EMAIL", "INVOICE_SMTP_HOST", "INVOICE_SMTP_FROM")
    if converted.get("NOTIFY_WEBHOOK_URL") and converted.get("NOTIFY_WEBHOOK_SECRET", "") is None:
        problems.append(Problem("NOTIFY_WEBHOOK_URL is set but NOTIFY_WEBHOOK_SECRET is not: receivers verify the "
                                "signature with it", ("NOTIFY_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET")))
    if converted.get("INVOICE_SMTP_USERNAME") and converted.get("INVOICE_SMTP_PASSWORD", "") is None:
        problems.append(Problem("INVOICE_SMTP_USERNAME is set but INVOICE_SMTP_PASSWORD is not",
                                ("INVOICE_SMTP_USERNAME", "INVOICE_SMTP_PASSWORD")))
    if ((converted.get("BILLING_REQUIRE_DATABASE_URL") or under_kubernetes)
            and "DATABASE_URL" in converted and converted["DATABASE_URL"] is None):
        why = "running under Kubernetes" if under_kubernetes else "BILLING_REQUIRE_DATABASE_URL is on"
        names = ("DATABASE_URL",) if under_kubernetes else ("DATABASE_URL", "BILLING_REQUIRE_DATABASE_URL")
        problems.append(Problem(f"DATABASE_URL is not set and the embedded database is refused ({why}): "
                                "set DATABASE_URL (check the Secret the job reads)", names))
    problems += _placeholder_seller(converted, under_kubernetes)
    problems += _tax_problems(converted)
    problems += _einvoice_problems(converted)
    return problems


def _tax_problems(converted: Mapping[str, object]) -> list[Problem]:
    """Taxes on need the seller's country and a valid tax id for it (domestic or cross-border, the
    reverse charge, and the seller's id printed on every invoice)."""
    if not converted.get("INVOICE_TAXES"):
        return []
    return _seller_identity_problems(converted, "INVOICE_TAXES is on", ", or turn INVOICE_TAXES off", "INVOICE_TAXES")


def _einvoice_problems(converted: Mapping[str, object]) -> list[Problem]:
    """An EN 16931 e-invoice names the seller's country (BT-40) and identifies the seller by its VAT or
    tax id (BR-CO-26). With taxes on, `_tax_problems` already asks for both."""
    if converted.get("INVOICE_EINVOICE") != "facturx" or converted.get("INVOICE_TAXES"):
        return []
    return _seller_identity_problems(converted, "INVOICE_EINVOICE is facturx",
                                     " (an EN 16931 e-invoice names them), or set INVOICE_EINVOICE=off",
                                     "INVOICE_EINVOICE")


def _seller_identity_problems(converted: Mapping[str, object], why: str, otherwise: str, flag: str) -> list[Problem]:
    """The seller's country and tax id, both set (naming the `flag` that needs them, `otherwise`: the
    rest of the sentence after "set …") and valid together."""
    country, tax_id = converted.get("INVOICE_SELLER_COUNTRY", ""), converted.get("INVOICE_SELLER_TAX_ID", "")
    missing = [name for name, value in (("INVOICE_SELLER_COUNTRY", country), ("INVOICE_SELLER_TAX_ID", tax_id))
               if value is None]
    if missing:
        names = " and ".join(missing)
        return [Problem(f"{why} but {names} {'is' if len(missing) == 1 else 'are'} not set: set {names}{otherwise}",
                        (flag, *missing))]
    return _seller_tax_id_problems(country, tax_id)


def _seller_tax_id_problems(country: object, tax_id: object) -> list[Problem]:
    if not country or not tax_id:
        return []  # one of them does not parse: already a problem of its own
    from ..tax_ids import TaxIdError, check_tax_id

    try:
        check_tax_id(str(tax_id), str(country))
    except TaxIdError as exc:
        return [Problem(f"INVOICE_SELLER_TAX_ID: {exc} (INVOICE_SELLER_COUNTRY={country}): fix the seller's tax id",
                        ("INVOICE_SELLER_TAX_ID", "INVOICE_SELLER_COUNTRY"))]
    return []


def _placeholder_seller(converted: Mapping[str, object], under_kubernetes: bool) -> list[Problem]:
    """The seller printed on invoices is the placeholder default (or set to it, e.g. from a copied
    .env.example) while invoices can reach customers: with any delivery on, or under Kubernetes."""
    placeholder = [name for name in SELLER_VARIABLES
                   if converted.get(name) in (None, VARIABLES_BY_NAME[name].convert(VARIABLES_BY_NAME[name].default))]
    reaching = [flag for flag in DELIVERY_FLAGS.values() if converted.get(flag)]
    if not placeholder or not (reaching or under_kubernetes):
        return []
    why = f"{' and '.join(reaching)} {'is' if len(reaching) == 1 else 'are'} on" if reaching else \
        "running under Kubernetes"
    names = " and ".join(placeholder)
    return [Problem(f"{names} {'is' if len(placeholder) == 1 else 'are'} unset or the placeholder ('Example Cloud "
                    f"Ltd', '1 Example Street') and {why}: set {names} to the seller printed on invoices",
                    tuple(placeholder))]


def _shard_problems(converted: Mapping[str, object]) -> list[Problem]:
    if "JOB_COMPLETION_INDEX" not in converted or "SHARD_COUNT" not in converted:
        return []  # one of them is not a number: already a problem of its own
    index, count = converted["JOB_COMPLETION_INDEX"], converted["SHARD_COUNT"]
    if index >= count:  # type: ignore[operator]
        return [Problem(f"JOB_COMPLETION_INDEX={index} is not below SHARD_COUNT={count}: the completions of the "
                        "Indexed Job and SHARD_COUNT must agree", ("JOB_COMPLETION_INDEX", "SHARD_COUNT"))]
    return []
