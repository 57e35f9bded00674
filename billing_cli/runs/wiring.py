"""Build the delivery adapters and notifiers a run uses from the settings (a turned-off one is None).

Building an adapter connects to nothing: each connects inside its first call.
"""

from __future__ import annotations

import threading

from ..config import Settings
from ..delivery.ports import Deliveries
from ..invoices import Seller


def seller_from_settings(settings: Settings) -> Seller:
    """The issuer printed on every invoice of a run, and how its PDFs format numbers."""
    return Seller(settings.seller_name, settings.seller_address, settings.seller_tax_id, settings.seller_country,
                  locale=settings.invoice_locale, payment_instructions=settings.payment_instructions,
                  pays_online=settings.stripe_enabled,
                  einvoice=settings.einvoice if settings.einvoice != "off" else None)


def taxes_from_settings(settings: Settings):  # -> taxes.TaxSetup | None
    """INVOICE_TAXES on: the seller's side of the tax rules (the job reads the rates); None when off."""
    if not settings.taxes_enabled:
        return None
    from ..taxes import TaxSetup

    assert settings.seller_country is not None and settings.seller_tax_id is not None  # checked by the settings
    return TaxSetup(settings.seller_country, settings.seller_tax_id)


def deliveries_from_settings(settings: Settings, *, concurrency: int | None = None,
                             stopping: threading.Event | None = None) -> Deliveries:
    """The adapters of the enabled deliveries, for a real run. `concurrency`: the worker threads
    that will share them (connection pools are sized to it); `stopping`: the run's SIGTERM, after
    which their calls start no new attempt."""
    store = payments = mailer = None
    connections = max(concurrency or settings.concurrency, 10)  # per peer, shared by the worker threads
    if settings.s3_enabled:
        from ..delivery.storage import S3Store

        assert settings.s3_bucket is not None
        store = S3Store(settings.s3_bucket, settings.s3_region, endpoint_url=settings.s3_endpoint_url,
                        link_seconds=settings.s3_link_seconds, max_attempts=settings.delivery_max_attempts,
                        timeout_seconds=settings.delivery_timeout_seconds, max_connections=connections,
                        max_retry_seconds=settings.delivery_max_retry_seconds,
                        breaker_failures=settings.delivery_breaker_failures, stopping=stopping)
    if settings.stripe_enabled:
        from ..delivery.payments import StripeGateway

        assert settings.stripe_api_key is not None
        payments = StripeGateway(settings.stripe_api_key.reveal(), api_base=settings.stripe_api_base,
                                 requests_per_second=settings.stripe_requests_per_second,
                                 max_attempts=settings.delivery_max_attempts,
                                 max_retry_seconds=settings.delivery_max_retry_seconds,
                                 timeout_seconds=settings.delivery_timeout_seconds,
                                 max_connections=connections, breaker_failures=settings.delivery_breaker_failures,
                                 stopping=stopping)
    if settings.email_enabled:
        mailer = smtp_mailer(settings, stopping=stopping)
    return Deliveries(store=store, payments=payments, mailer=mailer, sender=settings.smtp_from,
                      s3_prefix=settings.s3_prefix, days_until_due=settings.payment_terms_days,
                      attachment_max_bytes=settings.email_attachment_max_bytes)


def notifiers_from_settings(settings: Settings) -> list:
    """The completion notifiers that are configured (e-mail, webhook)."""
    notifiers: list = []
    if settings.notify_on_completion:
        from ..delivery.notify import EmailNotifier

        assert settings.smtp_from and settings.notify_email
        notifiers.append(EmailNotifier(smtp_mailer(settings), settings.smtp_from, settings.notify_email))
    if settings.webhook_url:
        from ..delivery.notify import WebhookNotifier

        assert settings.webhook_secret is not None
        notifiers.append(WebhookNotifier(settings.webhook_url, settings.webhook_secret.reveal(),
                                         timeout_seconds=settings.delivery_timeout_seconds,
                                         max_attempts=settings.delivery_max_attempts,
                                         max_wait_seconds=settings.delivery_max_retry_seconds))
    return notifiers


def smtp_mailer(settings: Settings, *, stopping: threading.Event | None = None):
    from ..delivery.mailer import SmtpMailer

    assert settings.smtp_host is not None
    return SmtpMailer(settings.smtp_host, settings.smtp_port, settings.smtp_security,  # type: ignore[arg-type]
                      username=settings.smtp_username,
                      password=settings.smtp_password.reveal() if settings.smtp_password else None,
                      timeout_seconds=settings.delivery_timeout_seconds,
                      max_attempts=settings.delivery_max_attempts,
                      max_wait_seconds=settings.delivery_max_retry_seconds,
                      breaker_failures=settings.delivery_breaker_failures, stopping=stopping)
