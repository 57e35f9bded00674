"""Rendering an invoice document to PDF bytes, and writing it to the output folder atomically."""

from __future__ import annotations

from ...delivery.pdf import PdfError
from ...invoices import InvoiceDocument
from ...outcomes import Component
from .options import InvoiceOptions
from .results import OrgOutcome


def render(document: InvoiceDocument, options: InvoiceOptions, outcome: OrgOutcome) -> bytes | None:
    """The PDF, also written to the output folder when there is one; None (and the outcome
    failed) when it could not be rendered or written."""
    try:
        pdf = options.renderer(document, options.seller)
    except PdfError as exc:
        outcome.fail(Component.PDF, f"PDF rendering failed: {exc}")
        return None
    outcome.pdf_bytes = len(pdf)
    if options.output_dir is not None:
        target = options.pdf_file(document.period, document.number, preview=document.preview)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".pdf.partial")
            partial.write_bytes(pdf)
            partial.replace(target)  # atomic: a crash never leaves half a PDF under the real name
        except OSError as exc:
            outcome.fail(Component.PDF, f"cannot write {target}: {exc.strerror}")
            return None
        outcome.pdf_path = str(target)
    return pdf
