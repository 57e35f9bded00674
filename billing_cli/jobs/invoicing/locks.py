"""What acting needs from the run's locks: that the run still holds its own, and one organization
at a time. The run layer provides them (runs/lifecycle.py); a dry run and in-process tests run
without."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class OrganizationLocks(Protocol):
    def check(self) -> None:
        """Raise (LockLost) when the run has lost its own lock."""

    def hold(self, organization_id: str) -> Iterator[bool]:
        """A context: True while this process alone handles the organization, False (at once)
        when another process does."""


class _NoLocks:
    def check(self) -> None:
        return None

    @contextmanager
    def hold(self, organization_id: str) -> Iterator[bool]:
        yield True


NO_LOCKS = _NoLocks()
