"""Settings from the environment and `.env`, validated before any work, with secrets masked."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import ConfigError

Source = Literal["env", ".env", "default"]


@dataclass(frozen=True)
class Variable:
    """One environment variable the program reads: its type, default and documentation."""

    name: str
    kind: Literal["str", "bool", "int", "month", "url", "path", "schedule"]
    default: str | None
    help: str
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("DATABASE_URL", "url", None,
             "PostgreSQL URL, e.g. postgresql://billing:PASSWORD@db:5432/billing. "
             "Unset: an embedded PostgreSQL under BILLING_HOME (not under Kubernetes).", secret=True),
    Variable("BILLING_REQUIRE_DATABASE_URL", "bool", "false",
             "Refuse the embedded database: a missing DATABASE_URL is a configuration error. "
             "Always on when KUBERNETES_SERVICE_HOST is set."),
    Variable("BILLING_HOME", "path", ".billing",
             "Folder for the embedded database and local files."),
    Variable("RUN_SCHEDULE", "schedule", "0 0 0 1 * *",
             "legacy-run's schedule: six-field cron, seconds first (five fields accepted)."),
    Variable("AGGREGATE_SCHEDULE", "schedule", "0 0 * * * *",
             "aggregate-hourly's schedule, for `billing schedule` and the manifests it checks."),
    Variable("INVOICE_SCHEDULE", "schedule", "0 0 0 1 * *",
             "invoice-monthly's schedule, for `billing schedule` and the manifests it checks."),
    Variable("PROCESS_MONTH", "month", None,
             "Month to invoice, YYYY-MM. Unset: the previous calendar month (UTC)."),
    Variable("DRY_RUN", "bool", "false",
             "Compute and report everything, write nothing, call no outside service."),
    Variable("AGGREGATE_LOOKBACK_HOURS", "int", "2",
             "aggregate-hourly also re-aggregates this many hours before its window, for late events."),
    Variable("INVOICE_SELLER_NAME", "str", "Example Cloud Ltd",
             "Seller name printed on invoices."),
    Variable("INVOICE_SELLER_ADDRESS", "str", "1 Example Street|London EC1A 1AA|United Kingdom",
             "Seller address on invoices; separate lines with '|'."),
    Variable("INVOICE_SELLER_TAX_ID", "str", None, "Seller tax / VAT id printed on invoices."),
    Variable("INVOICE_PAYMENT_TERMS_DAYS", "int", "30", "Days from issue date to due date."),
    Variable("INVOICE_OUTPUT_DIR", "path", None,
             "Also write each invoice PDF into this folder (<dir>/<YYYY-MM>/<number>.pdf)."),
    Variable("STATUS_AGGREGATE_MAX_AGE_HOURS", "int", "2",
             "`billing status --check`: aggregate-hourly's last success may be at most this old."),
    Variable("STATUS_INVOICE_DEADLINE_DAY", "int", "2",
             "`billing status --check`: the previous month must be invoiced by this day of the month."),
    Variable("STATUS_STUCK_AFTER_HOURS", "int", "6",
             "`billing status --check`: a run still running after this long is stuck."),
    Variable("LOG_FORMAT", "str", "auto",
             "auto (Rich on a terminal, JSON lines otherwise), rich, plain (key=value lines) or json."),
    Variable("LOG_LEVEL", "str", "info", "debug, info, warning or error: progress lines and notices below it are hidden."),
    Variable("PROMETHEUS_PUSHGATEWAY_URL", "str", None,
             "Push run metrics here at the end of every run, e.g. http://pushgateway:9091."),
    Variable("NOTIFY_ON_COMPLETION", "bool", "false",
             "E-mail a summary to NOTIFY_EMAIL after each run."),
    Variable("NOTIFY_EMAIL", "str", None,
             "Where completion notifications go (required when NOTIFY_ON_COMPLETION is on)."),
    Variable("NOTIFY_ON_DRY_RUN", "bool", "false", "Also notify after dry runs."),
    Variable("NOTIFY_ON_AGGREGATE_ERRORS", "bool", "false",
             "Also notify after an aggregate-hourly run that had errors."),
    Variable("NOTIFY_WEBHOOK_URL", "str", None,
             "POST a signed JSON summary here after each run (see docs/operations.md)."),
    Variable("NOTIFY_WEBHOOK_SECRET", "str", None,
             "HMAC-SHA256 key for the webhook signature (required with NOTIFY_WEBHOOK_URL).", secret=True),
    Variable("INVOICE_ENABLE_S3", "bool", "false", "Upload invoice PDFs to S3."),
    Variable("INVOICE_S3_BUCKET", "str", None, "S3 bucket for invoice PDFs (required when S3 is on)."),
    Variable("INVOICE_S3_REGION", "str", "us-east-1", "AWS region of the bucket."),
    Variable("INVOICE_S3_ENDPOINT_URL", "str", None,
             "Endpoint of an S3-compatible store (MinIO, staging); unset: AWS S3. Credentials: boto3's chain."),
    Variable("INVOICE_S3_PREFIX", "str", None, "Key prefix before invoices/YYYY/MM/<org>/<number>.pdf."),
    Variable("INVOICE_S3_LINK_EXPIRY_SECONDS", "int", "604800",
             "Lifetime of the presigned download link in invoice e-mails (at most 7 days = 604800)."),
    Variable("INVOICE_ENABLE_STRIPE", "bool", "false", "Create and send Stripe invoices."),
    Variable("STRIPE_API_KEY", "str", None,
             "Stripe secret key, sk_live_… or sk_test_… (required when Stripe is on).", secret=True),
    Variable("STRIPE_API_BASE", "str", None,
             "Another Stripe-compatible API base URL (tests, staging); unset: Stripe's own."),
    Variable("STRIPE_REQUESTS_PER_SECOND", "int", "25",
             "Client-side limit on Stripe requests (25 = Stripe's test-mode limit; live allows 100)."),
    Variable("INVOICE_ENABLE_EMAIL", "bool", "false", "E-mail invoices to organizations."),
    Variable("INVOICE_SMTP_HOST", "str", None, "SMTP server (required when e-mail is on)."),
    Variable("INVOICE_SMTP_PORT", "int", "587", "SMTP port."),
    Variable("INVOICE_SMTP_USERNAME", "str", None, "SMTP user; AUTH is used when set."),
    Variable("INVOICE_SMTP_PASSWORD", "str", None, "SMTP password.", secret=True),
    Variable("INVOICE_SMTP_FROM", "str", None,
             "From address of invoice e-mails (required when e-mail is on)."),
    Variable("INVOICE_SMTP_SECURITY", "str", None,
             "ssl (implicit TLS), starttls (certificate verified) or none (plain; local testing only). "
             "Unset: ssl on port 465, else starttls."),
    Variable("INVOICE_CONCURRENCY", "int", "16",
             "Organizations invoiced and delivered in parallel (the work waits on S3, Stripe and SMTP)."),
    Variable("PDF_RENDER_PROCESSES", "int", "2",
             "Processes rendering PDFs in large runs (rendering is CPU-bound; 1 renders in the worker threads)."),
    Variable("INVOICE_BATCH_SIZE", "int", "500",
             "Organizations read and handed to the workers at a time (memory stays flat)."),
    Variable("SHARD_COUNT", "int", "1",
             "Split invoice-monthly across this many processes (Kubernetes Indexed Job completions)."),
    Variable("JOB_COMPLETION_INDEX", "int", "0",
             "This process's shard, 0..SHARD_COUNT-1 (set by Kubernetes for Indexed Jobs)."),
    Variable("DELIVERY_MAX_ATTEMPTS", "int", "4",
             "Attempts per S3/Stripe/SMTP call on transient failures (exponential backoff with jitter)."),
    Variable("DELIVERY_TIMEOUT_SECONDS", "int", "30", "Network timeout of one S3/Stripe/SMTP call."),
    Variable("DELIVERY_MAX_RETRY_SECONDS", "int", "60", "Longest time spent retrying one delivery call."),
)

VARIABLES_BY_NAME = {v.name: v for v in VARIABLES}

_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "INVOICE_SMTP_PORT": (1, 65535), "INVOICE_PAYMENT_TERMS_DAYS": (0, 365),
    "INVOICE_S3_LINK_EXPIRY_SECONDS": (1, 604800), "STRIPE_REQUESTS_PER_SECOND": (1, 10000),
    "INVOICE_CONCURRENCY": (1, 256), "DELIVERY_MAX_ATTEMPTS": (1, 20), "DELIVERY_TIMEOUT_SECONDS": (1, 600),
    "DELIVERY_MAX_RETRY_SECONDS": (0, 3600), "AGGREGATE_LOOKBACK_HOURS": (0, 168),
    "INVOICE_BATCH_SIZE": (1, 100000), "PDF_RENDER_PROCESSES": (1, 64), "SHARD_COUNT": (1, 1000), "JOB_COMPLETION_INDEX": (0, 999), "STATUS_AGGREGATE_MAX_AGE_HOURS": (1, 8760),
    "STATUS_INVOICE_DEADLINE_DAY": (1, 28), "STATUS_STUCK_AFTER_HOURS": (1, 720),
}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Secret:
    """A secret string: printing or repr-ing it (also in a traceback) never shows the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_EXAMPLES = {
    "DATABASE_URL": "postgresql://billing:CHANGE_ME@localhost:5432/billing",
    "STRIPE_API_KEY": "sk_test_CHANGE_ME", "INVOICE_SMTP_PASSWORD": "CHANGE_ME",
    "INVOICE_S3_BUCKET": "my-invoices", "INVOICE_SMTP_HOST": "smtp.example.com",
    "INVOICE_SMTP_USERNAME": "billing", "INVOICE_SMTP_FROM": "Billing <billing@example.com>",
    "NOTIFY_EMAIL": "finance@example.com", "PROCESS_MONTH": "2024-01",
    "NOTIFY_WEBHOOK_URL": "https://hooks.example.com/billing", "NOTIFY_WEBHOOK_SECRET": "CHANGE_ME",
    "INVOICE_SELLER_TAX_ID": "GB123456789", "INVOICE_OUTPUT_DIR": "./invoices",
}


def env_example() -> str:
    """The documented `.env.example`: every variable, its meaning and default (`billing config --example`)."""
    lines = ["# billing configuration. Copy to .env and edit; real environment variables win over this file.",
             "# Booleans: true/false, 1/0, yes/no (any case). Secrets are masked by `billing config`.", ""]
    for var in VARIABLES:
        lines.append(f"# {var.help}" + (" (secret)" if var.secret else ""))
        if var.default is None:
            lines.append(f"# {var.name}={_EXAMPLES.get(var.name, '')}")
        else:
            lines.append(f'{var.name}="{var.default}"' if " " in var.default else f"{var.name}={var.default}")
        lines.append("")
    return "\n".join(lines)


def mask(name: str, value: str) -> str:
    """The printable form of a variable's value: secrets masked, URLs without passwords."""
    var = VARIABLES_BY_NAME.get(name)
    if var is None or not var.secret:
        return value
    if var.kind == "url":
        return mask_url_password(value)
    if name == "STRIPE_API_KEY":
        return value[:4] + "****" if len(value) > 8 else "****"
    return "****"


def mask_url_password(url: str) -> str:
    """`scheme://user:secret@host/db` -> `scheme://user:****@host/db` (also for unparsable URLs)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*):[^@]*@", r"\1:****@", url)


@dataclass(frozen=True)
class RawConfig:
    """What the environment and `.env` say, before validation: name -> (value, source)."""

    values: Mapping[str, tuple[str | None, Source]]
    env_file: Path
    under_kubernetes: bool

    def value(self, name: str) -> str | None:
        return self.values[name][0]


def read_raw_config(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> RawConfig:
    """Read every known variable: the real environment wins over `.env`, which wins over defaults."""
    from dotenv import dotenv_values

    environ = os.environ if environ is None else environ
    env_file = Path(environ.get("BILLING_ENV_FILE", ".env")) if env_file is None else env_file
    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file.is_file() else {}
    values: dict[str, tuple[str | None, Source]] = {}
    for var in VARIABLES:
        if environ.get(var.name, "") != "":
            values[var.name] = (environ[var.name], "env")
        elif from_file.get(var.name, "") != "":
            values[var.name] = (from_file[var.name], ".env")
        else:
            values[var.name] = (var.default, "default")
    return RawConfig(values, env_file, bool(environ.get("KUBERNETES_SERVICE_HOST")))


@dataclass(frozen=True)
class Settings:
    """The validated configuration every command and job works from."""

    database_url: Secret | None = None
    require_database_url: bool = False
    billing_home: Path = Path(".billing")
    run_schedule: str = "0 0 0 1 * *"
    aggregate_schedule: str = "0 0 * * * *"
    invoice_schedule: str = "0 0 0 1 * *"
    process_month: str | None = None
    dry_run: bool = False
    aggregate_lookback_hours: int = 2
    seller_name: str = "Example Cloud Ltd"
    seller_address: tuple[str, ...] = ("1 Example Street", "London EC1A 1AA", "United Kingdom")
    seller_tax_id: str | None = None
    payment_terms_days: int = 30
    invoice_output_dir: Path | None = None
    notify_on_completion: bool = False
    notify_email: str | None = None
    notify_on_dry_run: bool = False
    notify_on_aggregate_errors: bool = False
    webhook_url: str | None = None
    webhook_secret: Secret | None = None
    s3_enabled: bool = False
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None
    s3_prefix: str = ""
    s3_link_seconds: int = 604800
    stripe_enabled: bool = False
    stripe_api_key: Secret | None = None
    stripe_api_base: str | None = None
    stripe_requests_per_second: int = 25
    email_enabled: bool = False
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: Secret | None = None
    smtp_from: str | None = None
    smtp_security: str = "starttls"
    concurrency: int = 16
    batch_size: int = 500
    render_processes: int = 2
    shard_count: int = 1
    shard_index: int = 0
    status_aggregate_max_age_hours: int = 2
    status_invoice_deadline_day: int = 2
    status_stuck_after_hours: int = 6
    pushgateway_url: str | None = None
    delivery_max_attempts: int = 4
    delivery_timeout_seconds: int = 30
    delivery_max_retry_seconds: int = 60
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False)

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None


def load_settings(environ: Mapping[str, str] | None = None, env_file: Path | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError naming the first problem found."""
    return validate(read_raw_config(environ, env_file))


def validate(raw: RawConfig) -> Settings:
    problems: list[str] = []
    parsed: dict[str, object] = {}
    for var in VARIABLES:
        value, source = raw.values[var.name]
        if value is None:
            parsed[var.name] = None
            continue
        try:
            parsed[var.name] = _parse(var, value.strip())
        except ValueError as exc:
            where = f" (from {raw.env_file})" if source == ".env" else ""
            problems.append(f"{var.name}={mask(var.name, value)!r}{where}: {exc}")

    def require(flag: str, *needed: str) -> None:
        if parsed.get(flag):
            for name in needed:
                if parsed.get(name) is None:
                    problems.append(f"{flag} is on but {name} is not set: set {name} or turn {flag} off")

    require("INVOICE_ENABLE_S3", "INVOICE_S3_BUCKET")
    require("INVOICE_ENABLE_STRIPE", "STRIPE_API_KEY")
    require("INVOICE_ENABLE_EMAIL", "INVOICE_SMTP_HOST", "INVOICE_SMTP_FROM")
    require("NOTIFY_ON_COMPLETION", "NOTIFY_EMAIL", "INVOICE_SMTP_HOST", "INVOICE_SMTP_FROM")
    if parsed.get("NOTIFY_WEBHOOK_URL") and parsed.get("NOTIFY_WEBHOOK_SECRET") is None:
        problems.append("NOTIFY_WEBHOOK_URL is set but NOTIFY_WEBHOOK_SECRET is not: receivers verify the "
                        "signature with it")
    if parsed.get("INVOICE_SMTP_USERNAME") and parsed.get("INVOICE_SMTP_PASSWORD") is None:
        problems.append("INVOICE_SMTP_USERNAME is set but INVOICE_SMTP_PASSWORD is not")
    if (parsed.get("BILLING_REQUIRE_DATABASE_URL") or raw.under_kubernetes) and parsed.get("DATABASE_URL") is None:
        why = "running under Kubernetes" if raw.under_kubernetes else "BILLING_REQUIRE_DATABASE_URL is on"
        problems.append(f"DATABASE_URL is not set and the embedded database is refused ({why}): "
                        "set DATABASE_URL (check the Secret the job reads)")
    if (parsed.get("JOB_COMPLETION_INDEX") or 0) >= (parsed.get("SHARD_COUNT") or 1) and not problems:
        problems.append(f"JOB_COMPLETION_INDEX={parsed['JOB_COMPLETION_INDEX']} is not below "
                        f"SHARD_COUNT={parsed['SHARD_COUNT']}: the completions of the Indexed Job and "
                        "SHARD_COUNT must agree")
    if problems:
        more = f" (and {len(problems) - 1} more problem(s); see `billing config`)" if len(problems) > 1 else ""
        raise ConfigError(f"configuration error: {problems[0]}{more}")

    return Settings(
        database_url=_secret(parsed["DATABASE_URL"]),
        require_database_url=bool(parsed["BILLING_REQUIRE_DATABASE_URL"]) or raw.under_kubernetes,
        billing_home=parsed["BILLING_HOME"],  # type: ignore[arg-type]
        run_schedule=parsed["RUN_SCHEDULE"],  # type: ignore[arg-type]
        aggregate_schedule=parsed["AGGREGATE_SCHEDULE"],  # type: ignore[arg-type]
        invoice_schedule=parsed["INVOICE_SCHEDULE"],  # type: ignore[arg-type]
        process_month=parsed["PROCESS_MONTH"],  # type: ignore[arg-type]
        dry_run=bool(parsed["DRY_RUN"]),
        aggregate_lookback_hours=parsed["AGGREGATE_LOOKBACK_HOURS"],  # type: ignore[arg-type]
        seller_name=parsed["INVOICE_SELLER_NAME"],  # type: ignore[arg-type]
        seller_address=tuple(part.strip() for part in str(parsed["INVOICE_SELLER_ADDRESS"]).split("|")
                             if part.strip()),
        seller_tax_id=parsed["INVOICE_SELLER_TAX_ID"],  # type: ignore[arg-type]
        payment_terms_days=parsed["INVOICE_PAYMENT_TERMS_DAYS"],  # type: ignore[arg-type]
        invoice_output_dir=parsed["INVOICE_OUTPUT_DIR"],  # type: ignore[arg-type]
        notify_on_completion=bool(parsed["NOTIFY_ON_COMPLETION"]),
        notify_email=parsed["NOTIFY_EMAIL"],  # type: ignore[arg-type]
        notify_on_dry_run=bool(parsed["NOTIFY_ON_DRY_RUN"]),
        notify_on_aggregate_errors=bool(parsed["NOTIFY_ON_AGGREGATE_ERRORS"]),
        webhook_url=parsed["NOTIFY_WEBHOOK_URL"],  # type: ignore[arg-type]
        webhook_secret=_secret(parsed["NOTIFY_WEBHOOK_SECRET"]),
        s3_enabled=bool(parsed["INVOICE_ENABLE_S3"]),
        s3_bucket=parsed["INVOICE_S3_BUCKET"],  # type: ignore[arg-type]
        s3_region=parsed["INVOICE_S3_REGION"],  # type: ignore[arg-type]
        s3_endpoint_url=parsed["INVOICE_S3_ENDPOINT_URL"],  # type: ignore[arg-type]
        s3_prefix=parsed["INVOICE_S3_PREFIX"] or "",  # type: ignore[arg-type]
        s3_link_seconds=parsed["INVOICE_S3_LINK_EXPIRY_SECONDS"],  # type: ignore[arg-type]
        stripe_api_base=parsed["STRIPE_API_BASE"],  # type: ignore[arg-type]
        stripe_requests_per_second=parsed["STRIPE_REQUESTS_PER_SECOND"],  # type: ignore[arg-type]
        stripe_enabled=bool(parsed["INVOICE_ENABLE_STRIPE"]),
        stripe_api_key=_secret(parsed["STRIPE_API_KEY"]),
        email_enabled=bool(parsed["INVOICE_ENABLE_EMAIL"]),
        smtp_host=parsed["INVOICE_SMTP_HOST"],  # type: ignore[arg-type]
        smtp_port=parsed["INVOICE_SMTP_PORT"],  # type: ignore[arg-type]
        smtp_username=parsed["INVOICE_SMTP_USERNAME"],  # type: ignore[arg-type]
        smtp_password=_secret(parsed["INVOICE_SMTP_PASSWORD"]),
        smtp_from=parsed["INVOICE_SMTP_FROM"],  # type: ignore[arg-type]
        smtp_security=parsed["INVOICE_SMTP_SECURITY"] or ("ssl" if parsed["INVOICE_SMTP_PORT"] == 465
                                                          else "starttls"),  # type: ignore[arg-type]
        concurrency=parsed["INVOICE_CONCURRENCY"],  # type: ignore[arg-type]
        batch_size=parsed["INVOICE_BATCH_SIZE"],  # type: ignore[arg-type]
        render_processes=parsed["PDF_RENDER_PROCESSES"],  # type: ignore[arg-type]
        shard_count=parsed["SHARD_COUNT"],  # type: ignore[arg-type]
        status_aggregate_max_age_hours=parsed["STATUS_AGGREGATE_MAX_AGE_HOURS"],  # type: ignore[arg-type]
        status_invoice_deadline_day=parsed["STATUS_INVOICE_DEADLINE_DAY"],  # type: ignore[arg-type]
        status_stuck_after_hours=parsed["STATUS_STUCK_AFTER_HOURS"],  # type: ignore[arg-type]
        pushgateway_url=parsed["PROMETHEUS_PUSHGATEWAY_URL"],  # type: ignore[arg-type]
        shard_index=parsed["JOB_COMPLETION_INDEX"],  # type: ignore[arg-type]
        delivery_max_attempts=parsed["DELIVERY_MAX_ATTEMPTS"],  # type: ignore[arg-type]
        delivery_timeout_seconds=parsed["DELIVERY_TIMEOUT_SECONDS"],  # type: ignore[arg-type]
        delivery_max_retry_seconds=parsed["DELIVERY_MAX_RETRY_SECONDS"],  # type: ignore[arg-type]
        sources={name: src for name, (_, src) in raw.values.items()},
    )


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("not a boolean: use true/false, 1/0 or yes/no")


def _parse(var: Variable, value: str) -> object:
    if var.kind == "bool":
        return parse_bool(value)
    if var.kind == "int":
        try:
            number = int(value)
        except ValueError:
            raise ValueError("not a whole number") from None
        low, high = _INT_RANGES.get(var.name, (0, None))
        if number < low or (high is not None and number > high):
            raise ValueError(f"out of range: use {low} to {high}" if high is not None else f"must be at least {low}")
        return number
    if var.kind == "month":
        if not _MONTH.match(value):
            raise ValueError("not a month: use YYYY-MM, e.g. 2024-01")
        return value
    if var.kind == "url":
        if not re.match(r"^postgres(ql)?(\+psycopg)?://", value):
            raise ValueError("not a PostgreSQL URL: use postgresql://user:password@host:5432/dbname")
        return value
    if var.kind == "path":
        return Path(value).expanduser()
    if var.kind == "schedule":
        from .schedules import ScheduleError, parse_schedule

        try:
            parse_schedule(var.name, value)
        except ScheduleError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return " ".join(value.split())
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError("contains a line break or NUL")
    if var.name in ("NOTIFY_EMAIL", "INVOICE_SMTP_FROM") and not _EMAIL.match(value.rsplit("<", 1)[-1].rstrip(">")):
        raise ValueError("not an e-mail address")
    if var.name == "STRIPE_API_KEY" and not value.startswith(("sk_", "rk_")):
        raise ValueError("not a Stripe secret key: it starts with sk_ (or rk_ for a restricted key)")
    if var.name == "INVOICE_SMTP_SECURITY" and value not in ("ssl", "starttls", "none"):
        raise ValueError("use ssl, starttls or none")
    if var.name == "LOG_FORMAT" and value not in ("auto", "rich", "plain", "json"):
        raise ValueError("use auto, rich, plain or json")
    if var.name == "LOG_LEVEL" and value.lower() not in ("debug", "info", "warning", "error"):
        raise ValueError("use debug, info, warning or error")
    if var.name in ("STRIPE_API_BASE", "INVOICE_S3_ENDPOINT_URL", "NOTIFY_WEBHOOK_URL",
                    "PROMETHEUS_PUSHGATEWAY_URL") and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("not an http(s) URL")
    return value


def _secret(value: object) -> Secret | None:
    return None if value is None else Secret(str(value))
