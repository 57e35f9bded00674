"""`billing demo`: the newcomer's one command, on the embedded server and on a given database."""

from __future__ import annotations

import subprocess
from decimal import Decimal

from sqlalchemy import text
from typer.testing import CliRunner

from billing_cli.cli import app
from billing_cli.errors import ExitCode
from tests.conftest import BILLING, billing_subprocess_env
from tests.data import add_org

runner = CliRunner()


def test_demo_on_the_embedded_database(tmp_path) -> None:
    env = billing_subprocess_env(BILLING_HOME=str(tmp_path / ".billing"))
    proc = subprocess.run([*BILLING, "demo"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)

    assert proc.returncode == 0, proc.stderr
    assert "using the embedded PostgreSQL in" in proc.stderr
    assert (tmp_path / ".billing" / "pgdata" / "PG_VERSION").exists()
    lines = proc.stdout.splitlines()
    organizations = [line for line in lines if line.startswith("demo-organization ")]
    assert len(organizations) == 7
    assert 'demo-organization id=demo-lodz name="Łódź Café ΑΒΓ Кафе" status=active events=8928' in organizations
    assert "demo-organization id=demo-umbrella" in proc.stdout and "status=inactive" in proc.stdout
    aggregation = next(line for line in lines if line.startswith("summary job=aggregate-hourly"))
    # Every event is rolled up, the churned organization's too (it left on 20 January).
    assert aggregation.startswith("summary job=aggregate-hourly hours=744 failed_hours=0 organizations=6 "
                                  "events=74184 ")
    assert "orphan_events=0" in aggregation
    invoicing = next(line for line in lines if line.startswith("summary job=invoice-monthly"))
    # Piped, the demo still says where the PDFs are and what to try next.
    assert f"pdfs directory={tmp_path / '.billing' / 'invoices' / '2024-01'}" in lines
    assert "next command=\"billing invoice-monthly --month 2024-01 --dry-run\"" in lines
    assert invoicing.startswith("summary job=invoice-monthly month=2024-01 found=7 processed=7 invoiced=6 "
                                "already_invoiced=0 nothing_to_bill=1 failed=0")
    # Its final invoice: the 29.00 fee for the 19 of January's 31 days it was active (deactivated on
    # 20 January, 00:00): 29 x 19/31 = 17.774... -> 17.77; + (547,200 - 100,000 included) API calls
    # x 0.0004 = 178.88 + 55 started packages of 100 GB x 2.50 = 137.50 -> 334.15.
    umbrella = next(line for line in lines if line.startswith("organization id=demo-umbrella"))
    assert "status=invoiced" in umbrella and "total=334.15" in umbrella and "final=true" in umbrella
    # Taxes are on for the demo, from its German seller: Initech (Berlin) pays German VAT, 19% of
    # 582.30 = 110.637 -> 110.64; Łódź (a Polish VAT id) is reverse-charged; the others are outside
    # the EU (0% with the mention). Before taxes the revenue was 625.41 EUR.
    # Umbrella's final month is prorated: 29.00 - 17.77 = 11.23 USD less than a full fee.
    assert "revenue_EUR=736.05 revenue_USD=3837.27 tax_EUR=110.64 tax_USD=0.00" in invoicing
    initech_line = next(line for line in lines if line.startswith("organization id=demo-initech"))
    assert "total=692.94 currency=EUR tax=110.64" in initech_line
    pdfs = sorted(p.name for p in (tmp_path / ".billing" / "invoices" / "2024-01").iterdir())
    assert pdfs == [f"INV-2024-01-00000{n}.pdf" for n in range(1, 7)]
    from pypdf import PdfReader

    lodz = PdfReader(tmp_path / ".billing" / "invoices" / "2024-01" / "INV-2024-01-000004.pdf").pages[0].extract_text()
    assert "Łódź Café ΑΒΓ Кафе\nul. Piotrkowska 104\n90-926 Łódź\nPoland\nTax ID: PL5260250274" in lodz, lodz
    assert "Subtotal €43.11\nVAT reverse charge 0% (PL) on €43.11 €0.00\nTotal due €43.11\n" \
           "Reverse charge: VAT to be accounted for by the recipient, Art. 196 Directive 2006/112/EC" in lodz, lodz
    assert "Nimbus Metering GmbH INVOICE\nHauptstraße 1\n10115 Berlin\nGermany\nTax ID: DE136695976" in lodz
    initech = PdfReader(tmp_path / ".billing" / "invoices" / "2024-01" / "INV-2024-01-000003.pdf").pages[0].extract_text()
    assert "Tax ID: DE811907980" in initech
    assert "Subtotal €582.30\nVAT 19% (DE) on €582.30 €110.64\nTotal due €692.94" in initech, initech

    again = subprocess.run([*BILLING, "demo"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=180)
    assert again.returncode == 0, again.stderr
    again_lines = again.stdout.splitlines()
    assert "rows_written=0 rows_removed=0" in next(line for line in again_lines
                                                   if line.startswith("summary job=aggregate-hourly"))
    assert "invoiced=0 already_invoiced=6 nothing_to_bill=1 failed=0" in next(
        line for line in again_lines if line.startswith("summary job=invoice-monthly"))


def test_demo_totals_in_the_database(clean_env, db_url, engine) -> None:
    result = runner.invoke(app, ["demo"], env={"DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        totals = dict(conn.execute(text(
            "SELECT organization_id || '/' || metric, sum(quantity) FROM usage_hourly GROUP BY 1")).all())
    # demo-lodz: 3 api calls every 5 minutes for the 31 days of January.
    assert totals["demo-lodz/api_calls"] == Decimal(3 * 12 * 24 * 31)
    # demo-acme: 0.125 GB every 5 minutes.
    assert totals["demo-acme/storage_gb"] == Decimal("0.125") * 12 * 24 * 31
    # demo-tiny: one call at minute 0 of every hour.
    assert totals["demo-tiny/api_calls"] == 24 * 31
    # demo-umbrella: 100 calls every 5 minutes until it left on 20 January (19 days).
    assert totals["demo-umbrella/api_calls"] == 100 * 12 * 24 * 19


def test_demo_refuses_a_database_with_other_organizations(clean_env, db_url, engine) -> None:
    with engine.begin() as s:
        add_org(s, "customer-1")

    result = runner.invoke(app, ["demo"], env={"DATABASE_URL": db_url})

    assert result.exit_code == ExitCode.REFUSED
    assert "1 organization(s) that `billing demo` did not create" in result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_events")).scalar_one() == 0
