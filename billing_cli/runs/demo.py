"""`billing demo`: seed the demo's plans, organizations and month of usage, roll it up, invoice it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..config import Settings, read_raw_config, validate
from ..db.connect import open_database
from ..jobs.demo import DEMO_SELLER, DemoResult, run_demo
from ..jobs.invoicing import InvoiceOptions, InvoiceRunResult, OrgOutcome, invoice_month
from ..periods import utc_now
from ..taxes import TaxSetup
from .wiring import seller_from_settings


class DemoView(Protocol):
    def notice(self, text: str) -> None: ...
    def demo_started(self, database: str) -> None: ...
    def demo_seeded(self, result: DemoResult) -> None: ...
    def organizations_found(self, result: InvoiceRunResult) -> None: ...
    def organization_done(self, outcome: OrgOutcome) -> None: ...
    def invoicing_ended(self) -> None: ...


@dataclass(frozen=True)
class DemoRun:
    seeded: DemoResult
    invoiced: InvoiceRunResult
    output_dir: Path  # where the PDFs are, per month

    @property
    def ok(self) -> bool:
        return self.seeded.aggregation is not None and self.seeded.aggregation.ok and self.invoiced.ok


def run_whole_demo(view: DemoView) -> DemoRun:
    """The whole story in one command. Deliveries are off: nothing leaves the machine."""
    settings = _demo_settings()
    output_dir = (settings.invoice_output_dir or settings.billing_home / "invoices").resolve()
    with open_database(settings, notice=view.notice) as db:
        view.demo_started(db.where)
        seeded = run_demo(db.transactions)
        view.demo_seeded(seeded)
        # Its own seller and taxes on, whatever the environment says: the demo always shows taxes.
        seller = replace(seller_from_settings(settings), name=DEMO_SELLER.name, address=DEMO_SELLER.address,
                         tax_id=DEMO_SELLER.tax_id, country=DEMO_SELLER.country)
        assert seller.country is not None and seller.tax_id is not None
        options = InvoiceOptions(month=seeded.month, issue_date=utc_now().date(), output_dir=output_dir,
                                 payment_terms_days=settings.payment_terms_days, seller=seller,
                                 taxes=TaxSetup(seller.country, seller.tax_id))
        try:
            invoiced = invoice_month(db.transactions, options, on_start=view.organizations_found,
                                     on_outcome=view.organization_done)
        finally:
            view.invoicing_ended()
    return DemoRun(seeded, invoiced, output_dir)


def _demo_settings() -> Settings:
    """The configuration with the demo's own seller country and tax id in it, whatever the environment
    says: what needs them (INVOICE_EINVOICE=facturx) is checked against the seller the demo prints."""
    raw = read_raw_config()
    own = {"INVOICE_SELLER_COUNTRY": (DEMO_SELLER.country, "default"), "INVOICE_SELLER_TAX_ID": (DEMO_SELLER.tax_id,
                                                                                              "default")}
    return validate(replace(raw, values={**raw.values, **own}))
