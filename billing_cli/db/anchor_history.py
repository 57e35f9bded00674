"""Reads of organizations' anchor-change history (anchor_changes, kept by the organizations trigger).

Every read runs in the caller's transaction.
"""

from __future__ import annotations

from ..anchors import Anchor

# LEFT JOIN it to `organizations o`: `h.change_times` / `h.changes_before` are an organization's changes,
# oldest first (NULL: none). One grouped scan of the small table, hashed against the organizations.
JOIN = """
        LEFT JOIN (SELECT organization_id, array_agg(changed_at ORDER BY changed_at) AS change_times,
                          array_agg(anchor_before ORDER BY changed_at) AS changes_before
                   FROM anchor_changes GROUP BY organization_id) h ON h.organization_id = o.id"""

# Whether the organization has an anchor day or had one (in a row joined with JOIN).
ANCHORED = "(o.billing_anchor_day IS NOT NULL OR h.change_times IS NOT NULL)"


def anchor_of(row) -> Anchor:
    """The organization's Anchor from a row selecting o.billing_anchor_day, h.change_times and
    h.changes_before."""
    return Anchor.from_history(row.billing_anchor_day, zip(row.change_times or (), row.changes_before or (),
                                                           strict=True))
