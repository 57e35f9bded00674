"""The one table of environment variables: each one's Settings field, parser, default and documentation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass

from ..plain_text import holds_undecodable_bytes
from .parsers import (Bool, Choice, Country, Email, Folder, HttpUrl, Int, Lines, Locale, Month, Parser,
                      PostgresUrl, Schedule, StripeKey, Text)
from .secret import Secret


@dataclass(frozen=True)
class Variable:
    """One environment variable the program reads. Settings, `billing config`, .env.example and the
    README's table are all made from these records, so a setting is described here and nowhere else."""

    name: str
    attr: str | None  # the Settings field it fills; None: only checked here (the CLI reads it earlier)
    parse: Parser
    _: KW_ONLY
    default: str | None  # as it would be written in .env; None: unset unless configured
    help: str
    example: str | None = None  # the commented-out value in .env.example, for a variable without default
    secret: bool = False  # a Secret in Settings, masked in all output, kept in the Kubernetes Secret
    # The field's value when the variable has no value at all; a function gets the other fields.
    unset: object | Callable[[Mapping[str, object]], object] = None

    @property
    def kind(self) -> str:
        return self.parse.kind

    def convert(self, text: str) -> object:
        """The field's value for `text` (surrounding blanks ignored); a ValueError says what is wrong."""
        if holds_undecodable_bytes(text):  # from a Latin-1 shell
            raise ValueError("not UTF-8 text: export it from a UTF-8 shell (LANG=C.UTF-8), or convert it")
        value = self.parse(text.strip())
        return Secret(str(value)) if self.secret else value

    def when_unset(self, fields: Mapping[str, object]) -> object:
        return self.unset(fields) if callable(self.unset) else self.unset


def _security_for_port(fields: Mapping[str, object]) -> str:
    # Port 465 speaks TLS from the first byte (RFC 8314); the submission ports upgrade with STARTTLS.
    return "ssl" if fields["smtp_port"] == 465 else "starttls"


VARIABLES: tuple[Variable, ...] = (
    Variable("DATABASE_URL", "database_url", PostgresUrl(), default=None, secret=True,
             example="postgresql://billing:CHANGE_ME@localhost:5432/billing",
             help="PostgreSQL URL, e.g. postgresql://billing:PASSWORD@db:5432/billing. "
                  "Unset: an embedded PostgreSQL under BILLING_HOME (not under Kubernetes)."),
    Variable("BILLING_REQUIRE_DATABASE_URL", "require_database_url", Bool(), default="false",
             help="Refuse the embedded database: a missing DATABASE_URL is a configuration error. "
                  "Always on when KUBERNETES_SERVICE_HOST is set."),
    Variable("BILLING_HOME", "billing_home", Folder(), default=".billing",
             help="Folder for the embedded database and local files."),
    Variable("RUN_SCHEDULE", "run_schedule", Schedule(), default="0 0 0 1 * *",
             help="legacy-run's schedule: six-field cron, seconds first (five fields accepted)."),
    Variable("AGGREGATE_SCHEDULE", "aggregate_schedule", Schedule(), default="0 0 * * * *",
             help="aggregate-hourly's schedule, for `billing schedule` and the manifests it checks."),
    Variable("INVOICE_SCHEDULE", "invoice_schedule", Schedule(), default="0 0 0 * * *",
             help="invoice-monthly's schedule (daily: every period that ended is invoiced the next run), for "
                  "`billing schedule` and the manifests it checks."),
    Variable("RECONCILE_SCHEDULE", "reconcile_schedule", Schedule(), default="0 0 6 * * *",
             help="reconcile's schedule (daily, after the night's runs), for `billing schedule` and the manifests."),
    Variable("PROCESS_MONTH", "process_month", Month(), default=None, example="2024-01",
             help="Month to invoice, YYYY-MM: the periods that start in it. Unset: every period that has ended "
                  "(those of the previous calendar month, and of the one before that have no invoice yet)."),
    Variable("DRY_RUN", "dry_run", Bool(), default="false",
             help="Compute and report everything, write nothing, call no outside service."),
    Variable("AGGREGATE_LOOKBACK_HOURS", "aggregate_lookback_hours", Int(0, 168), default="2",
             help="The scheduled aggregate-hourly also rolls up those of this many hours before its window that "
                  "were never rolled up (a missed run); hours whose events changed are rolled up again "
                  "whatever their age."),
    Variable("LATE_USAGE_MONTHS", "late_usage_months", Int(0, 24), default="3",
             help="An invoice also bills the changed usage (late, deleted or corrected events) of this many "
                  "earlier months; older changes are reported, not billed (docs/plans.md)."),
    Variable("INVOICE_SELLER_NAME", "seller_name", Text(), default="Example Cloud Ltd",
             help="Seller (legal) name printed on invoices. The default is a placeholder for local runs and "
                  "previews: required with any INVOICE_ENABLE_* on and under Kubernetes."),
    Variable("INVOICE_SELLER_ADDRESS", "seller_address", Lines("|"),
             default="1 Example Street|London EC1A 1AA|United Kingdom",
             help="Seller address on invoices; separate lines with '|'. A placeholder by default: required "
                  "with any INVOICE_ENABLE_* on and under Kubernetes."),
    Variable("INVOICE_SELLER_TAX_ID", "seller_tax_id", Text(), default=None, example="GB123456789",
             help="Seller tax / VAT id printed on invoices. Required with INVOICE_TAXES on (checked with "
                  "python-stdnum for INVOICE_SELLER_COUNTRY)."),
    Variable("INVOICE_SELLER_COUNTRY", "seller_country", Country(), default=None, example="GB",
             help="The seller's country (ISO 3166-1 alpha-2): what is domestic and what is cross-border when "
                  "taxes are on. Required with INVOICE_TAXES on."),
    Variable("INVOICE_TAXES", "taxes_enabled", Bool(), default="false",
             help="Compute taxes on invoices (docs/taxes.md): the rates of `billing taxes apply`, reverse charge, "
                  "exemptions. Off: invoices carry no tax line, exactly as before. Needs INVOICE_SELLER_COUNTRY "
                  "and INVOICE_SELLER_TAX_ID."),
    Variable("INVOICE_EINVOICE", "einvoice", Choice("off", "facturx"), default="off",
             help="E-invoices (docs/einvoices.md): facturx makes every invoice PDF a PDF/A-3 with its Factur-X / "
                  "ZUGFeRD XML (EN 16931 profile) embedded, for buyers' accounting systems to read. Needs "
                  "INVOICE_SELLER_COUNTRY and INVOICE_SELLER_TAX_ID; off: plain PDFs."),
    Variable("INVOICE_PAYMENT_INSTRUCTIONS", "payment_instructions", Lines("|"), default=None, unset=(),
             example="Bank transfer to Example Cloud Ltd|IBAN GB33 BUKB 2020 1555 5555 55, BIC BUKBGB22",
             help="How to pay, printed on invoice PDFs under the total and in the invoice e-mail (e.g. the bank "
                  "account); separate lines with '|'. With Stripe on, the PDF also says that the invoice e-mail "
                  "links to its payment page."),
    Variable("INVOICE_LOCALE", "invoice_locale", Locale(), default="en",
             help="Locale of the numbers and amounts on invoice PDFs and e-mails (CLDR, via Babel): en gives "
                  "1,234.56 and €1,234.56, de 1.234,56 and 1.234,56 €. The invoice's words stay English."),
    Variable("INVOICE_PAYMENT_TERMS_DAYS", "payment_terms_days", Int(0, 365), default="30",
             help="Days from issue date to due date."),
    Variable("INVOICE_OUTPUT_DIR", "invoice_output_dir", Folder(), default=None, example="./invoices",
             help="Also write each invoice PDF into this folder (<dir>/<YYYY-MM>/<number>.pdf)."),
    Variable("STATUS_AGGREGATE_MAX_AGE_HOURS", "status_aggregate_max_age_hours", Int(1, 8760), default="2",
             help="`billing status --check`: aggregate-hourly's last success may be at most this old."),
    Variable("STATUS_INVOICE_GRACE_HOURS", "status_invoice_grace_hours", Int(1, 720), default="24",
             help="`billing status --check`: every billing period that ended more than this many hours ago must "
                  "be invoiced (a successful invoicing run since)."),
    Variable("STATUS_STUCK_AFTER_HOURS", "status_stuck_after_hours", Int(1, 720), default="6",
             help="`billing status --check`: a run still running after this long is stuck."),
    # The CLI reads LOG_FORMAT and LOG_LEVEL before validating, so that configuration errors
    # themselves come out in the chosen format; here they are only checked.
    Variable("LOG_FORMAT", None, Choice("auto", "rich", "plain", "json"), default="auto",
             help="auto (Rich on a terminal, JSON lines otherwise), rich, plain (key=value lines) or json."),
    Variable("LOG_LEVEL", None, Choice("debug", "info", "warning", "error", ignore_case=True), default="info",
             help="debug, info, warning or error: progress lines and notices below it are hidden."),
    Variable("PROMETHEUS_PUSHGATEWAY_URL", "pushgateway_url", HttpUrl(), default=None,
             help="Push run metrics here at the end of every run, e.g. http://pushgateway:9091."),
    Variable("NOTIFY_ON_COMPLETION", "notify_on_completion", Bool(), default="false",
             help="E-mail a summary to NOTIFY_EMAIL after each run."),
    Variable("NOTIFY_EMAIL", "notify_email", Email(), default=None, example="finance@example.com",
             help="Where completion notifications go (required when NOTIFY_ON_COMPLETION is on)."),
    Variable("NOTIFY_ON_DRY_RUN", "notify_on_dry_run", Bool(), default="false",
             help="Also notify after dry runs."),
    Variable("NOTIFY_ON_AGGREGATE_ERRORS", "notify_on_aggregate_errors", Bool(), default="false",
             help="Also notify after an aggregate-hourly run that had errors."),
    Variable("NOTIFY_WEBHOOK_URL", "webhook_url", HttpUrl(), default=None,
             example="https://hooks.example.com/billing",
             help="POST a signed JSON summary here after each run (see docs/operations.md)."),
    Variable("NOTIFY_WEBHOOK_SECRET", "webhook_secret", Text(), default=None, secret=True, example="CHANGE_ME",
             help="HMAC-SHA256 key for the webhook signature (required with NOTIFY_WEBHOOK_URL)."),
    Variable("INVOICE_ENABLE_S3", "s3_enabled", Bool(), default="false",
             help="Upload invoice PDFs to S3."),
    Variable("INVOICE_S3_BUCKET", "s3_bucket", Text(), default=None, example="my-invoices",
             help="S3 bucket for invoice PDFs (required when S3 is on)."),
    Variable("INVOICE_S3_REGION", "s3_region", Text(), default="us-east-1",
             help="AWS region of the bucket."),
    Variable("INVOICE_S3_ENDPOINT_URL", "s3_endpoint_url", HttpUrl(), default=None,
             help="Endpoint of an S3-compatible store (MinIO, staging); unset: AWS S3. Credentials: boto3's chain."),
    Variable("INVOICE_S3_PREFIX", "s3_prefix", Text(), default=None, unset="",
             help="Key prefix before invoices/YYYY/MM/<org>/<number>.pdf."),
    Variable("INVOICE_S3_LINK_EXPIRY_SECONDS", "s3_link_seconds", Int(1, 604800), default="604800",
             help="Lifetime of the S3 download link an invoice e-mail carries when the PDF is not attached (at most "
                  "7 days = 604800); offered only if the credentials outlive it."),
    Variable("INVOICE_ENABLE_STRIPE", "stripe_enabled", Bool(), default="false",
             help="Create and send Stripe invoices."),
    Variable("STRIPE_API_KEY", "stripe_api_key", StripeKey(), default=None, secret=True,
             example="sk_test_CHANGE_ME",
             help="Stripe secret key, sk_live_… or sk_test_… (required when Stripe is on)."),
    Variable("STRIPE_API_BASE", "stripe_api_base", HttpUrl(), default=None,
             help="Another Stripe-compatible API base URL (tests, staging); unset: Stripe's own."),
    Variable("STRIPE_REQUESTS_PER_SECOND", "stripe_requests_per_second", Int(1, 10000), default="25",
             help="Client-side limit on Stripe requests (25 = Stripe's test-mode limit; live allows 100)."),
    Variable("INVOICE_ENABLE_EMAIL", "email_enabled", Bool(), default="false",
             help="E-mail invoices to organizations."),
    Variable("INVOICE_SMTP_HOST", "smtp_host", Text(), default=None, example="smtp.example.com",
             help="SMTP server (required when e-mail is on)."),
    Variable("INVOICE_SMTP_PORT", "smtp_port", Int(1, 65535), default="587",
             help="SMTP port."),
    Variable("INVOICE_SMTP_USERNAME", "smtp_username", Text(), default=None, example="billing",
             help="SMTP user; AUTH is used when set."),
    Variable("INVOICE_SMTP_PASSWORD", "smtp_password", Text(), default=None, secret=True, example="CHANGE_ME",
             help="SMTP password."),
    Variable("INVOICE_SMTP_FROM", "smtp_from", Email(), default=None, example="Billing <billing@example.com>",
             help="From address of invoice e-mails (required when e-mail is on)."),
    Variable("INVOICE_SMTP_SECURITY", "smtp_security", Choice("ssl", "starttls", "none"), default=None,
             unset=_security_for_port,
             help="ssl (implicit TLS), starttls (certificate verified) or none (plain; local testing only). "
                  "Unset: ssl on port 465, else starttls."),
    Variable("INVOICE_EMAIL_ATTACHMENT_MAX_BYTES", "email_attachment_max_bytes", Int(0, 50_000_000),
             default="5000000",
             help="Largest PDF attached to an invoice e-mail; a larger one is linked instead (S3). 0: never attach."),
    Variable("INVOICE_CONCURRENCY", "concurrency", Int(1, 256), default="16",
             help="Organizations invoiced and delivered in parallel (the work waits on S3, Stripe and SMTP)."),
    Variable("PDF_RENDER_PROCESSES", "render_processes", Int(1, 64), default="2",
             help="Processes rendering PDFs in large runs (rendering is CPU-bound; 1 renders in the worker "
                  "threads)."),
    Variable("INVOICE_BATCH_SIZE", "batch_size", Int(1, 100000), default="500",
             help="Organizations read and handed to the workers at a time (memory stays flat)."),
    Variable("SHARD_COUNT", "shard_count", Int(1, 1000), default="1",
             help="Split invoice-monthly across this many processes (Kubernetes Indexed Job completions)."),
    Variable("JOB_COMPLETION_INDEX", "shard_index", Int(0, 999), default="0",
             help="This process's shard, 0..SHARD_COUNT-1 (set by Kubernetes for Indexed Jobs)."),
    Variable("DELIVERY_MAX_ATTEMPTS", "delivery_max_attempts", Int(1, 20), default="4",
             help="Attempts per S3/Stripe/SMTP call on transient failures (exponential backoff with jitter)."),
    Variable("DELIVERY_TIMEOUT_SECONDS", "delivery_timeout_seconds", Int(1, 600), default="30",
             help="Network timeout of one S3/Stripe/SMTP call."),
    Variable("DELIVERY_MAX_RETRY_SECONDS", "delivery_max_retry_seconds", Int(0, 3600), default="60",
             help="Longest time spent retrying one S3/Stripe/SMTP call (all its attempts)."),
    Variable("DELIVERY_CIRCUIT_BREAKER_FAILURES", "delivery_breaker_failures", Int(0, 10000), default="5",
             help="After this many failures in a row of one service (each after its retries), it is not called "
                  "again in the run: its steps stay for the next run (0: never give up)."),
)

VARIABLES_BY_NAME = {v.name: v for v in VARIABLES}

# The seller's identity: its defaults are placeholders that must never reach a customer.
SELLER_VARIABLES = ("INVOICE_SELLER_NAME", "INVOICE_SELLER_ADDRESS")


def mask(name: str, value: str) -> str:
    """The printable form of a variable's value: secrets masked, URLs without passwords."""
    var = VARIABLES_BY_NAME.get(name)
    if var is None or not (var.secret or var.parse.masks_always):
        return value
    return var.parse.mask(value)


# The feature flag of each delivery step, by the step's name (outcomes.Step), for the run layer
# (which adapters to build) and the reports ("skipped: INVOICE_ENABLE_S3 is off").
DELIVERY_FLAGS: dict[str, str] = {"s3": "INVOICE_ENABLE_S3", "stripe": "INVOICE_ENABLE_STRIPE",
                                  "email": "INVOICE_ENABLE_EMAIL"}
