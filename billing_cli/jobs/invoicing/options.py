"""The settings of one invoicing run, resolved from flags and configuration by the run layer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from ...db.usage_store import Shard
from ...delivery.pdf import render_invoice
from ...delivery.ports import Deliveries
from ...invoices import InvoiceDocument, Seller
from ...money import Precision
from .locks import NO_LOCKS, OrganizationLocks
from ...outcomes import Job, Step
from ...periods import Month
from ...taxes import TaxSetup


@dataclass(frozen=True)
class InvoiceOptions:
    month: Month
    issue_date: date
    seller: Seller
    dry_run: bool = False
    job: str = Job.INVOICE_MONTHLY
    organizations: tuple[str, ...] = ()
    regenerate: bool = False
    output_dir: Path | None = None
    payment_terms_days: int = 30
    batch_size: int = 500
    deliveries: Deliveries = field(default_factory=Deliveries)  # the adapters (none in a dry run)
    delivery_steps: tuple[Step, ...] = ()  # the deliveries that are on (their flags), planned in a dry run too
    concurrency: int = 1
    shard: Shard = field(default_factory=Shard)
    stop: threading.Event | None = None  # set on SIGTERM/SIGINT: finish what is in flight, take nothing new
    locks: OrganizationLocks = field(default_factory=lambda: NO_LOCKS)  # the run's locks (runs/lifecycle.py)
    grace_seconds: float = 20.0
    render_processes: int = 1  # PDF rendering in this many processes for large runs (1: in the threads)
    renderer: Callable[[InvoiceDocument, Seller], bytes] = render_invoice
    keep_plan: bool = False  # keep every organization's outcome in the result (a dry run's --json plan)
    late_usage_months: int = 3  # earlier months whose changed usage an invoice adjusts (LATE_USAGE_MONTHS)
    precision: Precision = Precision.ISO  # STRIPE when invoices go to Stripe: amounts it can charge exactly
    taxes: TaxSetup | None = None  # INVOICE_TAXES on: the seller's country and tax id (rates read by the job)
    due_by: datetime | None = None  # only periods ended by then are invoiced (now; None with --force)
    uninvoiced_only: bool = False  # a catch-up pass: only organizations without a live invoice of the month

    def pdf_file(self, month: Month, number: str, *, preview: bool = False) -> Path:
        """Where an invoice's PDF is written in the output folder. A dry run's preview has a name
        of its own: its number is only the one a real run would take, and a real run may take it
        meanwhile (a dry run holds no lock), so a preview never replaces an issued invoice's PDF."""
        assert self.output_dir is not None
        return self.output_dir / str(month) / f"{number}{'.preview' if preview else ''}.pdf"

    @property
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()
