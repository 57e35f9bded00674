"""aggregate-hourly against a real PostgreSQL: hand-computed totals, boundaries, reruns, dry runs."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import text

from billing_cli.db.usage_rollup import apply_hour, lock_hours
from billing_cli.db.usage_store import stale_hours
from billing_cli.jobs.aggregate import aggregate_hours, aggregate_one_hour, find_late_hours
from billing_cli.periods import HOUR, HourRange, Month
from tests.data import add_event, add_org, hourly_rows, table_snapshot, utc

H13 = utc(2024, 1, 31, 13)
H14 = utc(2024, 1, 31, 14)
ONE_HOUR_13 = HourRange(H13, H14)


def seed_two_orgs(session) -> None:
    add_org(session, "org-a")
    add_org(session, "org-b")
    add_event(session, "org-a", "api_calls", "10", utc(2024, 1, 31, 13, 0, 0))
    add_event(session, "org-a", "api_calls", "2.5", utc(2024, 1, 31, 13, 30))
    add_event(session, "org-a", "storage_gb", "0.000001", utc(2024, 1, 31, 13, 45))
    add_event(session, "org-b", "api_calls", "7", utc(2024, 1, 31, 13, 59, 59, 999999))
    # Just outside the hour on both sides: must not count.
    add_event(session, "org-a", "api_calls", "1000", utc(2024, 1, 31, 12, 59, 59, 999999))
    add_event(session, "org-b", "api_calls", "1000", utc(2024, 1, 31, 14, 0, 0))


def test_hand_computed_totals_and_hour_boundaries(transactions) -> None:
    with transactions() as s:
        seed_two_orgs(s)

    result = aggregate_hours(transactions, ONE_HOUR_13)

    with transactions() as s:
        assert hourly_rows(s) == [
            ("org-a", "api_calls", H13, Decimal("12.5"), 2),
            ("org-a", "storage_gb", H13, Decimal("0.000001"), 1),
            ("org-b", "api_calls", H13, Decimal("7"), 1),  # 13:59:59.999999 belongs to 13:00
        ]
    assert result.ok and result.events == 4
    assert [(m.metric, m.organizations, m.events, m.quantity) for m in result.totals_by_metric()] == [
        ("api_calls", 2, 3, Decimal("19.5")), ("storage_gb", 1, 1, Decimal("0.000001"))]
    assert result.hours[0].inserted == 3 and result.hours[0].updated == 0


def test_event_at_the_next_hour_start_belongs_to_the_next_hour(transactions) -> None:
    with transactions() as s:
        seed_two_orgs(s)
    aggregate_hours(transactions, HourRange(H14, H14 + timedelta(hours=1)))
    with transactions() as s:
        assert hourly_rows(s) == [("org-b", "api_calls", H14, Decimal("1000"), 1)]


def test_rerun_is_identical_and_late_events_are_picked_up(transactions) -> None:
    with transactions() as s:
        seed_two_orgs(s)
    aggregate_hours(transactions, ONE_HOUR_13)
    with transactions() as s:
        first = hourly_rows(s)

    again = aggregate_hours(transactions, ONE_HOUR_13)
    with transactions() as s:
        assert hourly_rows(s) == first
    assert (again.hours[0].inserted, again.hours[0].updated, again.hours[0].deleted) == (0, 0, 0)

    with transactions() as s:  # a late event for 13:xx arrives
        add_event(s, "org-b", "api_calls", "3", utc(2024, 1, 31, 13, 5), received_at=utc(2099, 1, 1))
    late = aggregate_hours(transactions, ONE_HOUR_13)
    with transactions() as s:
        rows = hourly_rows(s)
        recorded = s.execute(text("SELECT event_count, last_received_at FROM aggregated_hours "
                                  "WHERE hour_start = :h"), {"h": H13}).one()
    assert ("org-b", "api_calls", H13, Decimal("10"), 2) in rows
    assert late.hours[0].updated == 1 and late.hours[0].inserted == 0
    assert recorded.event_count == 5  # every event of the hour, active organizations or not
    assert recorded.last_received_at == utc(2099, 1, 1)  # what the completeness check compares


def test_every_event_is_rolled_up_whatever_its_organization_and_orphans_are_counted(transactions) -> None:
    with transactions() as s:
        add_org(s, "org-live")
        add_org(s, "org-gone", status="inactive")
        add_event(s, "org-live", "api_calls", "1", H13)
        add_event(s, "org-gone", "api_calls", "5", H13)
        add_event(s, "org-unknown", "api_calls", "9", H13)  # no organizations row (yet)
        add_event(s, "org-unknown", "api_calls", "1", H13)

    result = aggregate_hours(transactions, ONE_HOUR_13)

    with transactions() as s:
        assert hourly_rows(s) == [("org-gone", "api_calls", H13, Decimal("5"), 1),
                                  ("org-live", "api_calls", H13, Decimal("1"), 1),
                                  ("org-unknown", "api_calls", H13, Decimal("10"), 2)]
    assert (result.orphan_events, result.orphan_ids) == (2, ["org-unknown"])
    assert result.summary().counts["orphan_events"] == 2


def test_events_edited_or_deleted_in_place_mark_their_hours_until_rolled_up_again(transactions) -> None:
    from billing_cli.db.usage_store import stale_hours
    from billing_cli.periods import Month

    with transactions() as s:
        seed_two_orgs(s)
    aggregate_hours(transactions, HourRange(utc(2024, 1, 31, 12), utc(2024, 1, 31, 15)))
    with transactions() as s:
        assert stale_hours(s, Month(2024, 1)) == []
        # Same count, same arrival times: only the trigger's change log can tell.
        s.execute(text("UPDATE usage_events SET quantity = quantity + 1 WHERE organization_id = 'org-b' "
                       "AND occurred_at < :h14"), {"h14": H14})
        assert stale_hours(s, Month(2024, 1)) == [H13]

    aggregate_hours(transactions, ONE_HOUR_13)

    with transactions() as s:
        assert stale_hours(s, Month(2024, 1)) == []
        assert ("org-b", "api_calls", H13, Decimal("8"), 1) in hourly_rows(s)
        revised = s.execute(text("SELECT organization_id, period_start FROM usage_revisions "
                                 "ORDER BY 1")).all()
        assert [tuple(r) for r in revised] == [("org-a", Month(2024, 1).first_day), ("org-b", Month(2024, 1).first_day)]


def test_events_edited_or_deleted_through_a_partition_itself_mark_their_hours_too(transactions) -> None:
    """A statement that names a partition (an operator's fix of one month, or clearing strays from
    the default partition) fires that partition's triggers, not usage_events': each partition
    carries the same change triggers, those made later by billing_usage_events_partition too."""
    with transactions() as s:
        seed_two_orgs(s)
        add_event(s, "org-a", "api_calls", "4", utc(2024, 2, 1, 9))  # stays in the default partition
        s.execute(text("SELECT billing_usage_events_partition('2024-01-01')"))  # January moves out of it
    aggregate_hours(transactions, HourRange(utc(2024, 1, 31, 12), utc(2024, 1, 31, 15)))
    aggregate_one_hour(transactions, utc(2024, 2, 1, 9))
    with transactions() as s:
        assert stale_hours(s, Month(2024, 1)) == [] and stale_hours(s, Month(2024, 2)) == []
        # Same count, same arrival times: only the partition's own triggers can tell.
        s.execute(text("UPDATE usage_events_2024_01 SET quantity = quantity + 1 WHERE organization_id = 'org-b' "
                       "AND occurred_at < :h14"), {"h14": H14})
        s.execute(text("UPDATE usage_events_default SET quantity = 5 WHERE organization_id = 'org-a'"))
        assert stale_hours(s, Month(2024, 1)) == [H13]
        assert stale_hours(s, Month(2024, 2)) == [utc(2024, 2, 1, 9)]

    aggregate_hours(transactions, ONE_HOUR_13)
    aggregate_one_hour(transactions, utc(2024, 2, 1, 9))

    with transactions() as s:
        assert stale_hours(s, Month(2024, 1)) == [] and stale_hours(s, Month(2024, 2)) == []
        rows = hourly_rows(s)
        assert ("org-b", "api_calls", H13, Decimal("8"), 1) in rows
        assert ("org-a", "api_calls", utc(2024, 2, 1, 9), Decimal("5"), 1) in rows


def test_an_hour_whose_events_disappeared_leaves_no_stale_rows(transactions) -> None:
    with transactions() as s:
        seed_two_orgs(s)
    aggregate_hours(transactions, ONE_HOUR_13)
    with transactions() as s:
        s.execute(text("DELETE FROM usage_events WHERE organization_id = 'org-a' AND metric = 'storage_gb'"))

    result = aggregate_hours(transactions, ONE_HOUR_13)

    with transactions() as s:
        assert [r[:2] for r in hourly_rows(s)] == [("org-a", "api_calls"), ("org-b", "api_calls")]
    assert result.hours[0].deleted == 1


def test_dry_run_writes_nothing_and_reports_what_it_would_do(transactions) -> None:
    with transactions() as s:
        seed_two_orgs(s)
        before = table_snapshot(s, "usage_hourly", "aggregated_hours", "usage_events", "organizations")

    result = aggregate_hours(transactions, ONE_HOUR_13, dry_run=True)

    with transactions() as s:
        assert table_snapshot(s, "usage_hourly", "aggregated_hours", "usage_events", "organizations") == before
    assert result.dry_run and result.hours[0].inserted == 3 and result.events == 4


def test_dry_run_after_a_real_run_previews_only_the_changes(transactions) -> None:
    with transactions() as s:
        seed_two_orgs(s)
    aggregate_hours(transactions, ONE_HOUR_13)
    with transactions() as s:
        add_event(s, "org-a", "api_calls", "1", utc(2024, 1, 31, 13, 1))
        add_event(s, "org-a", "bandwidth", "1", utc(2024, 1, 31, 13, 1))

    preview = aggregate_hours(transactions, ONE_HOUR_13, dry_run=True).hours[0]
    applied = aggregate_hours(transactions, ONE_HOUR_13).hours[0]

    assert (preview.inserted, preview.updated, preview.deleted) == (1, 1, 0)
    assert (applied.inserted, applied.updated, applied.deleted) == (1, 1, 0)


def test_a_backfill_range_records_every_hour_even_without_events(transactions) -> None:
    with transactions() as s:
        seed_two_orgs(s)
    window = HourRange(utc(2024, 1, 31, 10), utc(2024, 1, 31, 16))

    result = aggregate_hours(transactions, window)

    with transactions() as s:
        hours = s.execute(text("SELECT hour_start, event_count FROM aggregated_hours ORDER BY 1")).all()
    assert [tuple(h) for h in hours] == [
        (utc(2024, 1, 31, 10), 0), (utc(2024, 1, 31, 11), 0), (utc(2024, 1, 31, 12), 1),
        (utc(2024, 1, 31, 13), 4), (utc(2024, 1, 31, 14), 1), (utc(2024, 1, 31, 15), 0)]
    assert len(result.hours) == 6 and result.ok


def test_huge_exact_quantities_are_summed_without_rounding(transactions) -> None:
    with transactions() as s:
        add_org(s, "org-big")
        add_event(s, "org-big", "tokens", "999999999999999999.000000000001", H13)
        add_event(s, "org-big", "tokens", "0.000000000001", H13 + timedelta(minutes=1))
    aggregate_hours(transactions, ONE_HOUR_13)
    with transactions() as s:
        assert hourly_rows(s)[0][3] == Decimal("999999999999999999.000000000002")


# --- two roll-ups of the same hour at once ----------------------------------------------------------

H = utc(2024, 1, 10, 13)


def _rolled_up(engine, org: str, hour: datetime) -> Decimal | None:
    with engine.connect() as conn:
        return conn.execute(text("SELECT quantity FROM usage_hourly WHERE organization_id = :o AND hour_start = :h"),
                            {"o": org, "h": hour}).scalar_one_or_none()


def _waiting_on_a_lock(engine, pid: int) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                                 {"p": pid}).scalar())


def test_an_edit_committed_between_two_concurrent_roll_ups_of_its_hour_is_never_rolled_up(engine) -> None:
    """invoice-monthly's prepare (every shard) and aggregate-hourly's late hours roll up the same
    hours at the same time: both take them from usage_event_changes. Roll-up A starts before a
    correction (5 -> 7) commits, roll-up B, which got to the hour first, rolls it up after it and
    commits first. Were A's statement to read its snapshot before B commits, it would overwrite B's
    7 with its 5 (ON CONFLICT DO UPDATE in READ COMMITTED updates the latest row with A's values),
    while B already deleted the hour's change marker; the count and the latest arrival are unchanged
    by an UPDATE, so neither late_hours nor invoicing's stale_hours would ever look at the hour again:
    2 units never billed. A waits for B's hour lock instead, and reads after B commits."""
    with engine.begin() as conn:
        add_org(conn, "acme")
        add_event(conn, "acme", "api_calls", "5", H + timedelta(minutes=10))
    aggregate_hours(engine.begin, HourRange(H, H + HOUR))
    assert _rolled_up(engine, "acme", H) == Decimal(5)

    b = engine.connect()
    b_tx = b.begin()
    # B is a roll-up that got to the hour first: it holds what a roll-up holds, the hour's lock
    # and (the statement under way) the hour's usage_hourly row.
    lock_hours(b, H, H + HOUR)
    b.execute(text("UPDATE usage_hourly SET updated_at = updated_at WHERE organization_id = 'acme'"))
    fix = engine.connect()
    fix_tx = fix.begin()
    fix.execute(text("UPDATE usage_events SET quantity = 7 WHERE organization_id = 'acme'"))  # not committed yet

    a_pid: list[int] = []
    a_error: list[BaseException] = []

    def roll_up_a() -> None:
        try:
            with engine.begin() as a:
                a_pid.append(a.execute(text("SELECT pg_backend_pid()")).scalar_one())
                apply_hour(a, H, H + HOUR)
        except BaseException as exc:  # noqa: BLE001 - reported below
            a_error.append(exc)

    thread = threading.Thread(target=roll_up_a)
    thread.start()
    for _ in range(100):
        if a_pid and _waiting_on_a_lock(engine, a_pid[0]):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("roll-up A never waited for B")
    fix_tx.commit()  # the correction commits while A waits
    apply_hour(b, H, H + HOUR)  # B sees 7, writes it and clears the hour's change marker
    b_tx.commit()
    thread.join(10)
    b.close()
    fix.close()
    assert not a_error, a_error

    with engine.connect() as conn:
        events = conn.execute(text("SELECT sum(quantity) FROM usage_events WHERE organization_id = 'acme'")).scalar_one()
    assert events == Decimal(7)
    # Whoever looks next: the scheduled run's late hours and invoicing's stale hours.
    late = find_late_hours(engine.begin, HourRange(utc(2024, 2, 1), utc(2024, 2, 1, 1)))
    with engine.connect() as conn:
        stale = stale_hours(conn, Month(2024, 1))
    late_or_stale = set(late) | set(stale)
    if H in late_or_stale:
        aggregate_one_hour(engine.begin, H)
    assert _rolled_up(engine, "acme", H) == Decimal(7), (
        f"usage_hourly holds {_rolled_up(engine, 'acme', H)} for 7 in events, and no check finds the hour "
        f"(late: {late}, stale: {stale})")


def test_roll_ups_of_different_hours_do_not_wait_for_each_other(engine) -> None:
    with engine.connect() as holder, holder.begin():
        lock_hours(holder, H, H + 3 * HOUR)
        with engine.begin() as other:
            other.execute(text("SET LOCAL lock_timeout = '1s'"))
            apply_hour(other, H + 3 * HOUR, H + 4 * HOUR)  # the next hour: not held, no wait
            apply_hour(other, H - HOUR, H)


# --- the late-events scan's hour of margin --------------------------------------------------------

FEB = Month(2024, 2)


def test_a_roll_up_outside_the_scheduled_run_does_not_shorten_the_margin_for_slow_producers(engine) -> None:
    """The scheduled run S1 (58 minutes ago) rolled up H. A producer's transaction began 63 minutes
    ago (received_at = its start) with an event of H, and committed after S1: exactly what the hour
    of margin is for. Then, a minute before the next scheduled run, something else rolls up an hour
    (invoice-monthly's stale hours, or an operator's `aggregate-hourly --hour`): were the margin
    counted from the latest roll-up (max(aggregated_at)), it would start after the event's
    received_at, and the next scheduled run would never find it. January is invoiced already:
    February's invoicing only looks at edits of January, so the event would never be billed."""
    with engine.begin() as conn:
        add_org(conn, "acme")
        add_event(conn, "acme", "api_calls", "5", H + timedelta(minutes=10))
    aggregate_hours(engine.begin, HourRange(H, H + HOUR))
    with engine.begin() as conn:  # S1 ran 58 minutes ago; H's own event arrived long before
        conn.execute(text("UPDATE usage_events SET received_at = now() - interval '3 hours'"))
        conn.execute(text("UPDATE aggregated_hours SET aggregated_at = now() - interval '58 minutes', "
                          "last_received_at = now() - interval '3 hours'"))
        conn.execute(text("DELETE FROM usage_event_changes"))  # the UPDATE above is the test's, not an edit
        add_event(conn, "acme", "api_calls", "7", H + timedelta(minutes=20),
                  received_at=conn.execute(text("SELECT now() - interval '63 minutes'")).scalar_one())
    window = HourRange(utc(2024, 2, 10, 13), utc(2024, 2, 10, 14))  # the next scheduled run's hour
    assert H in find_late_hours(engine.begin, window)  # without the extra roll-up, the margin finds it

    aggregate_one_hour(engine.begin, utc(2024, 2, 1, 0))  # any roll-up, a minute before the scheduled run
    late = find_late_hours(engine.begin, window)
    with engine.connect() as conn:
        stale = stale_hours(conn, FEB, edited_since=Month(2023, 11))  # February's invoicing
    assert H in late or H in stale, f"the 7 units of {H:%Y-%m-%dT%H} are never rolled up (late {late}, stale {stale})"


def _scanned(engine, minutes_ago: int, found: list[datetime] = ()) -> None:  # type: ignore[assignment]
    """The late-events scan of a scheduled run `minutes_ago` minutes ago, as it recorded itself."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO late_usage_scan (id, scanned_at, found_hours) "
                          "VALUES (true, now() - make_interval(mins => :m), :found) ON CONFLICT (id) DO UPDATE "
                          "SET scanned_at = EXCLUDED.scanned_at, found_hours = EXCLUDED.found_hours"),
                     {"m": minutes_ago, "found": list(found)})


def _rolled_up_minutes_ago(engine, hour: datetime, minutes: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE aggregated_hours SET aggregated_at = now() - make_interval(mins => :m), "
                          "last_received_at = now() - interval '3 hours' WHERE hour_start = :h"),
                     {"m": minutes, "h": hour})


def test_the_margin_counts_from_the_previous_scan_not_from_the_latest_roll_up(engine) -> None:
    """As above, with the scheduled run's scan recorded as that run made it (59 minutes ago): the
    next scan reads the arrivals from an hour before it, whatever rolled up since."""
    with engine.begin() as conn:
        add_org(conn, "acme")
        add_event(conn, "acme", "api_calls", "5", H + timedelta(minutes=10), received_at=utc(2024, 1, 10, 14))
    aggregate_hours(engine.begin, HourRange(H, H + HOUR))
    _rolled_up_minutes_ago(engine, H, 58)
    _scanned(engine, 59)
    with engine.begin() as conn:  # began before the scan, committed after it
        add_event(conn, "acme", "api_calls", "7", H + timedelta(minutes=20),
                  received_at=conn.execute(text("SELECT now() - interval '63 minutes'")).scalar_one())
    aggregate_one_hour(engine.begin, utc(2024, 2, 1, 0))  # an --hour run, or invoicing's stale hours

    window = HourRange(utc(2024, 2, 10, 13), utc(2024, 2, 10, 14))
    assert find_late_hours(engine.begin, window) == [H]
    aggregate_hours(engine.begin, window, late_hours=[H])
    assert _rolled_up(engine, "acme", H) == Decimal(12)
    assert find_late_hours(engine.begin, window) == []  # and the next scan is quiet again


def test_hours_a_scan_found_stay_late_until_a_roll_up_after_it_reads_them(engine) -> None:
    """The scheduled run found H late, then stopped before rolling it up (SIGTERM, a crash, the
    hour failed). Its scan was recorded: the next one's margin no longer reaches H's late event,
    but H is still found, until a roll-up that began after the scan has read it."""
    with engine.begin() as conn:
        add_org(conn, "acme")
        add_event(conn, "acme", "api_calls", "5", H + timedelta(minutes=10), received_at=utc(2024, 1, 10, 14))
    aggregate_hours(engine.begin, HourRange(H, H + HOUR))
    _rolled_up_minutes_ago(engine, H, 180)
    _scanned(engine, 120)
    with engine.begin() as conn:
        add_event(conn, "acme", "api_calls", "7", H + timedelta(minutes=20),
                  received_at=conn.execute(text("SELECT now() - interval '150 minutes'")).scalar_one())
    window = HourRange(utc(2024, 2, 10, 13), utc(2024, 2, 10, 14))
    assert find_late_hours(engine.begin, window) == [H]  # recorded; the run then stops before H

    _scanned(engine, 90, found=[H])  # that scan, as of 90 minutes ago: its margin starts after the event
    assert find_late_hours(engine.begin, window) == [H]
    assert find_late_hours(engine.begin, window) == [H]  # as often as the runs stop first

    aggregate_one_hour(engine.begin, H)
    assert _rolled_up(engine, "acme", H) == Decimal(12)
    assert find_late_hours(engine.begin, window) == []


def test_a_dry_run_s_scan_is_not_recorded(engine) -> None:
    with engine.begin() as conn:
        add_org(conn, "acme")
        add_event(conn, "acme", "api_calls", "5", H + timedelta(minutes=10), received_at=utc(2024, 1, 10, 14))
    aggregate_hours(engine.begin, HourRange(H, H + HOUR))
    _scanned(engine, 59)
    with engine.connect() as conn:
        before = conn.execute(text("SELECT scanned_at, found_hours FROM late_usage_scan")).one()
    window = HourRange(utc(2024, 2, 10, 13), utc(2024, 2, 10, 14))
    find_late_hours(engine.begin, window, dry_run=True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT scanned_at, found_hours FROM late_usage_scan")).one() == before
    find_late_hours(engine.begin, window)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT scanned_at > :before FROM late_usage_scan"),
                            {"before": before.scanned_at}).scalar_one()
