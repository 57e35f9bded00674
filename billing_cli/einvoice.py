"""The EN 16931 e-invoice of an invoice document: Factur-X / ZUGFeRD CII XML (profile EN 16931). Pure: no I/O.

It carries what the PDF prints, from the same stored values: the number, dates and period, both
parties, every line (quantity, unit price, amount), the tax breakdown and the totals. Amounts are
the stored Decimals written with the currency's decimals; nothing is computed again or rounded.
How our invoices map onto EN 16931 (VAT categories, negative lines, stacked taxes, an invoice
without taxes) is in docs/einvoices.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date
from decimal import Context, Decimal, Inexact, InvalidOperation

from .addresses import CountryError, country_name
from .invoices import InvoiceDocument, Seller
from .money import EN16931_DECIMALS, ZERO, exact_sum, minor_units
from .taxes import InvoiceTax, Treatment

INVOICE = "380"  # UNTDID 1001: commercial invoice
CREDIT_NOTE = "381"  # UNTDID 1001: credit note
PROFILE = "urn:cen.eu:en16931:2017"  # Factur-X's EN 16931 (Comfort) profile: BT-24
NOT_SUBJECT_TO_VAT = "Not subject to VAT: no VAT is charged on this invoice"

_RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
_RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
_UDT = "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
_QDT = "urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
_NAMESPACES = {"rsm": _RSM, "ram": _RAM, "udt": _UDT, "qdt": _QDT}
_EXACT = Context(prec=80, traps=[Inexact, InvalidOperation])
# What XML 1.0 cannot hold (control characters but tab and line breaks, surrogates, U+FFFE/U+FFFF),
# which the account service's data may still contain: the number is taken before the PDF is made.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class EInvoiceError(ValueError):
    """The document cannot be expressed as an EN 16931 e-invoice."""


@dataclass(frozen=True)
class VatCategory:
    """One VAT breakdown of the e-invoice (BG-23), and the category every line carries with it."""

    code: str  # UNTDID 5305: S standard, Z zero rated, E exempt, AE reverse charge, O outside the scope
    rate: Decimal | None  # None for O, which carries no rate (BR-O-05)
    basis: Decimal  # BT-116
    amount: Decimal  # BT-117
    reason: str | None = None  # BT-120, required for E, AE and O
    reason_code: str | None = None  # BT-121 (VATEX)


def vat_category(doc: InvoiceDocument, seller: Seller) -> VatCategory:
    """The one VAT category of the invoice: every rule of taxes.py gives the whole taxable subtotal one
    treatment, so every line carries the same category and rate.

    - taxes off (no breakdown): O, outside the scope of VAT, tax 0, with the NOT_SUBJECT_TO_VAT reason;
    - exempt: E with the exemption's mention; reverse charge: AE (VATEX-EU-AE) with its mention;
    - charged rates: S at their rate. Stacked rates (Canada's GST and Quebec's QST, both on the whole
      subtotal) become one S category at their summed rate, taxing the same base; its tax is the sum
      of the stored, separately rounded taxes (EN 16931 gives a line one VAT rate);
    - a listed 0% rate: O (outside the scope, with the rate's mention) for a buyer in another country,
      Z (zero rated) for a domestic one.
    """
    subtotal = doc.subtotal
    if not doc.taxes:
        return VatCategory("O", None, subtotal, ZERO, NOT_SUBJECT_TO_VAT, "VATEX-EU-O")
    treatments = {tax.treatment for tax in doc.taxes}
    if len(treatments) > 1 or any(tax.taxable_amount != subtotal for tax in doc.taxes):
        raise EInvoiceError("the tax breakdown mixes treatments or bases: EN 16931 cannot express it")
    first = doc.taxes[0]
    tax_total = exact_sum(tax.amount for tax in doc.taxes)
    if first.treatment is Treatment.EXEMPT:  # no VATEX code: the article of the exemption is the buyer's
        return VatCategory("E", ZERO, subtotal, tax_total, first.mention or "Exempt from VAT")
    if first.treatment is Treatment.REVERSE_CHARGE:
        return VatCategory("AE", ZERO, subtotal, tax_total, first.mention or "Reverse charge", "VATEX-EU-AE")
    rate = exact_sum(tax.percentage for tax in doc.taxes)
    if rate > 0:
        return VatCategory("S", rate, subtotal, tax_total)
    if first.country != (seller.country or "").upper():
        return VatCategory("O", None, subtotal, tax_total, _mention(doc.taxes) or NOT_SUBJECT_TO_VAT, "VATEX-EU-O")
    return VatCategory("Z", ZERO, subtotal, tax_total)


def type_code(doc: InvoiceDocument) -> str:
    return CREDIT_NOTE if doc.is_credit_note else INVOICE


def build_xml(doc: InvoiceDocument, seller: Seller) -> bytes:
    """The CII XML (UTF-8) of `doc`, an invoice (380) or a credit note (381). The preceding invoice
    (BT-25) is the one a credit note credits, or the void one a regenerated invoice replaces.

    A credit note states what it credits in positive amounts, its type code giving the sign: our
    credit note's negated lines, taxes and totals are written negated back."""
    from lxml import etree

    credit_note = doc.is_credit_note

    def sign(value: Decimal) -> Decimal:  # exact, whatever the digits
        return value.copy_negate() if credit_note else value

    category = vat_category(doc, seller)
    category = replace(category, basis=sign(category.basis), amount=sign(category.amount))
    currency = doc.currency

    def el(parent, tag: str, text: str | None = None, **attributes: str):
        prefix, name = tag.split(":")
        node = etree.SubElement(parent, f"{{{_NAMESPACES[prefix]}}}{name}", attributes)
        if text is not None:
            node.text = _NOT_XML.sub(" ", text)  # as the PDF prints it: a space, never a failed invoice
        return node

    def day(parent, tag: str, value: date) -> None:
        el(el(parent, tag), "udt:DateTimeString", value.strftime("%Y%m%d"), format="102")

    def money(value: Decimal) -> str:
        return _amount(value, currency)

    def trade_tax(parent, *, header: bool) -> None:
        tax = el(parent, "ram:ApplicableTradeTax")
        if header:
            el(tax, "ram:CalculatedAmount", money(category.amount))
        el(tax, "ram:TypeCode", "VAT")
        if header and category.reason:
            el(tax, "ram:ExemptionReason", category.reason)
        if header:
            el(tax, "ram:BasisAmount", money(category.basis))
        el(tax, "ram:CategoryCode", category.code)
        if header and category.reason_code:
            el(tax, "ram:ExemptionReasonCode", category.reason_code)
        if category.rate is not None:
            el(tax, "ram:RateApplicablePercent", _plain(category.rate))

    def period(parent, first: date, last: date) -> None:
        node = el(parent, "ram:BillingSpecifiedPeriod")
        day(node, "ram:StartDateTime", first)
        day(node, "ram:EndDateTime", last)

    root = etree.Element(f"{{{_RSM}}}CrossIndustryInvoice", nsmap=_NAMESPACES)
    context = el(root, "rsm:ExchangedDocumentContext")
    el(el(context, "ram:GuidelineSpecifiedDocumentContextParameter"), "ram:ID", PROFILE)
    header = el(root, "rsm:ExchangedDocument")
    el(header, "ram:ID", doc.number)
    el(header, "ram:TypeCode", type_code(doc))
    day(header, "ram:IssueDateTime", doc.issue_date)
    notes = ((f"Credit note for invoice {doc.credits}. Reason: {doc.reason}",) if credit_note and doc.reason else ())
    for note in (*notes, *doc.tax_mentions):
        el(el(header, "ram:IncludedNote"), "ram:Content", note)

    transaction = el(root, "rsm:SupplyChainTradeTransaction")
    for number, line in enumerate(doc.lines, start=1):
        # EN 16931 forbids a negative net price (BR-27): a credit or a correction is a negative quantity.
        quantity, price = sign(line.quantity), line.unit_price
        if price < 0:
            quantity, price = quantity.copy_negate(), price.copy_negate()
        item = el(transaction, "ram:IncludedSupplyChainTradeLineItem")
        el(el(item, "ram:AssociatedDocumentLineDocument"), "ram:LineID", str(number))
        el(el(item, "ram:SpecifiedTradeProduct"), "ram:Name", line.description)
        el(el(el(item, "ram:SpecifiedLineTradeAgreement"), "ram:NetPriceProductTradePrice"), "ram:ChargeAmount",
           _plain(price))
        el(el(item, "ram:SpecifiedLineTradeDelivery"), "ram:BilledQuantity", _plain(quantity), unitCode="C62")
        settlement = el(item, "ram:SpecifiedLineTradeSettlement")
        trade_tax(settlement, header=False)
        if line.period is not None and line.period != doc.period:  # a correction of an earlier period
            days = doc.line_period(line)
            period(settlement, days.start.date(), days.last_day)
        el(el(settlement, "ram:SpecifiedTradeSettlementLineMonetarySummation"), "ram:LineTotalAmount",
           money(sign(line.amount)))

    agreement = el(transaction, "ram:ApplicableHeaderTradeAgreement")
    el(agreement, "ram:BuyerReference", doc.organization_id)
    # A VAT identifier starts with its country's code (BR-CO-09), and with category O none may appear
    # (BR-O-02). Otherwise the seller's tax id is its identifier (BT-29, which BR-CO-26 then asks for)
    # and tax registration (BT-32); a buyer's id without a country prefix (an Australian ABN, an
    # Indian GSTIN) is its legal registration (BT-47); a buyer's VAT id under O is left out.
    outside = category.code == "O"
    seller_tax, buyer_tax = _compact(seller.tax_id), _compact(doc.bill_to_tax_id)
    seller_vat = seller_tax if seller_tax and not outside and _vat_prefixed(seller_tax) else None
    _party(el, el(agreement, "ram:SellerTradeParty"), name=seller.name, address=_seller_address(seller),
           country=seller.country, identifier=seller_tax if seller_vat is None else None, vat_id=seller_vat,
           tax_registration=seller_tax if seller_vat is None else None)
    buyer_vat = buyer_tax if buyer_tax and _vat_prefixed(buyer_tax) else None
    _party(el, el(agreement, "ram:BuyerTradeParty"), name=doc.bill_to_name, address=doc.bill_to_address,
           country=buyer_country(doc), identifier=doc.organization_id, email=doc.bill_to_email,
           vat_id=buyer_vat if not outside else None, legal_id=buyer_tax if buyer_vat is None else None)
    delivery = el(transaction, "ram:ApplicableHeaderTradeDelivery")
    billed = doc.billing_period  # the organization's own period (anchor day), else the calendar month
    day(el(delivery, "ram:ActualDeliverySupplyChainEvent"), "ram:OccurrenceDateTime", billed.last_day)

    settlement = el(transaction, "ram:ApplicableHeaderTradeSettlement")
    el(settlement, "ram:PaymentReference", doc.number)
    el(settlement, "ram:InvoiceCurrencyCode", currency)
    trade_tax(settlement, header=True)
    period(settlement, billed.start.date(), billed.last_day)
    reference = doc.credits if credit_note else doc.replaces
    terms = el(settlement, "ram:SpecifiedTradePaymentTerms")
    if credit_note:
        el(terms, "ram:Description", f"Credit note for invoice {reference}: nothing is owed for that invoice.")
    else:
        el(terms, "ram:Description", " ".join((f"Payment is due by {doc.due_date.isoformat()}.",
                                               *seller.payment_instructions)))
        day(terms, "ram:DueDateDateTime", doc.due_date)
    totals = el(settlement, "ram:SpecifiedTradeSettlementHeaderMonetarySummation")
    el(totals, "ram:LineTotalAmount", money(sign(exact_sum(line.amount for line in doc.lines))))
    el(totals, "ram:TaxBasisTotalAmount", money(sign(doc.subtotal)))
    el(totals, "ram:TaxTotalAmount", money(sign(doc.tax_total)), currencyID=currency)
    el(totals, "ram:GrandTotalAmount", money(sign(doc.total)))
    el(totals, "ram:DuePayableAmount", money(sign(doc.total)))
    if reference:
        el(el(settlement, "ram:InvoiceReferencedDocument"), "ram:IssuerAssignedID", reference)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def buyer_country(doc: InvoiceDocument) -> str | None:
    """The buyer's ISO country code: the tax breakdown's country (taxes on), else the last line of the
    printed address (`addresses.postal_lines` ends with the country's name); None when unknown."""
    if doc.taxes:
        return doc.taxes[0].country
    if doc.bill_to_address:
        return _country_code(doc.bill_to_address[-1])
    return None


def _party(el, party, *, name: str, address: tuple[str, ...], country: str | None, identifier: str | None = None,
           email: str | None = None, vat_id: str | None = None, tax_registration: str | None = None,
           legal_id: str | None = None) -> None:
    """A trade party, its elements in the order of the CII schema."""
    if identifier:
        el(party, "ram:ID", identifier)
    el(party, "ram:Name", name)
    if legal_id:
        el(el(party, "ram:SpecifiedLegalOrganization"), "ram:ID", legal_id)
    if country:  # BT-40 / BT-55: an address without a country is not an EN 16931 address
        lines = [line for line in address if line]
        if lines and _country_code(lines[-1]) == country:
            lines = lines[:-1]  # the country's name: CountryID says it
        postal = el(party, "ram:PostalTradeAddress")
        for tag, line in zip(("ram:LineOne", "ram:LineTwo", "ram:LineThree"), _at_most_three(lines)):
            el(postal, tag, line)
        el(postal, "ram:CountryID", country)
    if email:
        el(el(party, "ram:URIUniversalCommunication"), "ram:URIID", email, schemeID="EM")
    if vat_id:
        el(el(party, "ram:SpecifiedTaxRegistration"), "ram:ID", vat_id, schemeID="VA")
    if tax_registration:
        el(el(party, "ram:SpecifiedTaxRegistration"), "ram:ID", tax_registration, schemeID="FC")


def _compact(tax_id: str | None) -> str | None:
    """A tax id as identifiers are written: capitals, without the blanks, dots and dashes people type
    (`fr 40.303.265.045`, which python-stdnum and so the reverse charge accept, is FR40303265045)."""
    return re.sub(r"[\s.\-\x00-\x1f\x7f-\x9f]", "", tax_id).upper() or None if tax_id else None


def _vat_prefixed(tax_id: str) -> bool:
    """Whether a tax id starts with a country code, as a VAT identifier must (EL for Greece)."""
    return len(tax_id) > 2 and tax_id[:2].isascii() and tax_id[:2].isalpha() and tax_id[:2].isupper()


def _seller_address(seller: Seller) -> tuple[str, ...]:
    return tuple(" ".join(line.split()) for line in seller.address)


def _at_most_three(lines: list[str]) -> list[str]:
    """EN 16931 has three address lines (BT-35, BT-36, BT-162): further lines join the third."""
    return lines[:2] + [", ".join(lines[2:])] if len(lines) > 3 else lines


def _country_code(name: str) -> str | None:
    import pycountry

    for country in pycountry.countries:
        if name in (getattr(country, "common_name", None), country.name):
            try:
                if country_name(country.alpha_2) == name:
                    return country.alpha_2
            except CountryError:
                return None
    return None


def _mention(taxes: tuple[InvoiceTax, ...]) -> str | None:
    return next((tax.mention for tax in taxes if tax.mention), None)


def _amount(value: Decimal, currency: str) -> str:
    """An amount with the currency's decimals, at most the two EN 16931 allows (BR-DEC): 43.11 EUR,
    1505 JPY, 12.65 BHD (an invoice kept in hundredths, money.Precision.EN16931). An invoice of a
    three-decimal currency issued before e-invoices were on keeps its thousandths: never rounded into
    another amount than the one stored (the rules then fail, docs/einvoices.md "Limits"). An amount
    that would need rounding even so is an error."""
    for places in sorted({min(minor_units(currency), EN16931_DECIMALS), minor_units(currency)}):
        try:
            return f"{value.quantize(Decimal(1).scaleb(-places), context=_EXACT):f}"
        except (Inexact, InvalidOperation):
            continue
    raise EInvoiceError(f"{value} {currency} is not a stored amount of {currency}")


def _plain(value: Decimal) -> str:
    """A quantity, unit price or rate with every significant digit, never in exponent notation."""
    text = f"{value.normalize(_EXACT):f}"
    return text if text != "-0" else "0"

