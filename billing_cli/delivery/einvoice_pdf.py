"""Factur-X: the invoice PDF made a PDF/A-3 with its EN 16931 XML embedded, by the `factur-x` library.

The library validates the XML against the Factur-X EN 16931 XSD it ships (an invalid e-invoice is a
rendering error, never sent), embeds it as `factur-x.xml` (AFRelationship /Data, listed in the
catalog's /AF), writes the PDF/A-3 XMP metadata (pdfaid part 3, conformance B, and the Factur-X
extension schema: document type INVOICE, level EN 16931) and the document information dictionary.
What PDF/A needs from the PDF itself, fonts embedded and an output intent, the renderer does
(`pdf.py`, `srgb_profile`).

The library stamps the current time into the XMP metadata, the information dictionary and the
embedded file's parameters. An invoice must render to the same bytes every time (its sha256 is
stored, and a rerun compares it), so those stamps are pinned to the invoice's issue date.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time
from functools import cache

from ..einvoice import build_xml
from ..invoices import InvoiceDocument, Seller

FACTURX = "facturx"
XML_FILENAME = "factur-x.xml"
_STAMPING = threading.Lock()  # the pinned clock is the library's module state: one embedding at a time


def embed_facturx(pdf: bytes, doc: InvoiceDocument, seller: Seller) -> bytes:
    """`pdf` as a Factur-X PDF/A-3 carrying the EN 16931 XML of `doc` (an invoice or a credit note)."""
    import facturx
    from facturx import facturx as library

    xml = build_xml(doc, seller)
    stamp = datetime.combine(doc.issue_date, time(), tzinfo=UTC)
    kind = "Credit note" if doc.is_credit_note else "Invoice"
    metadata = {"author": seller.name, "keywords": f"{kind}, Factur-X",
                "title": f"{seller.name}: {kind} {doc.number}",
                "subject": f"{kind} {doc.number} dated {doc.issue_date.isoformat()} issued by {seller.name}"}
    with _STAMPING:
        saved = library._get_pdf_timestamp, library._get_metadata_timestamp
        library._get_pdf_timestamp = lambda date=None: saved[0](date or stamp)
        library._get_metadata_timestamp = lambda: stamp.strftime("%Y-%m-%dT%H:%M:%S+00:00")
        try:
            return facturx.generate_from_binary(pdf, xml, flavor="factur-x", level="en16931", check_xsd=True,
                                                pdf_metadata=metadata, lang="en")
        finally:
            library._get_pdf_timestamp, library._get_metadata_timestamp = saved


@cache
def srgb_profile() -> bytes:
    """An sRGB ICC profile for the PDF/A output intent (made by LittleCMS through Pillow, once per
    process), with its creation date pinned so that every rendering carries the same bytes."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = bytes((0x07, 0xD0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0))  # dateTimeNumber 2000-01-01 00:00:00
    return bytes(profile)
