"""The delivery adapters a run uses, as one value: a turned-off delivery is None.

Each port (FileStore, PaymentGateway, Mailer) is a small Protocol beside its real adapter; jobs
receive this bundle as an argument and never build adapters themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..outcomes import Step

if TYPE_CHECKING:  # the adapters' modules load when a run builds them, not for every command
    from .mailer import Mailer
    from .payments import PaymentGateway
    from .storage import FileStore


@dataclass(frozen=True)
class Deliveries:
    store: FileStore | None = None
    payments: PaymentGateway | None = None
    mailer: Mailer | None = None
    sender: str | None = None
    s3_prefix: str = ""
    days_until_due: int = 30
    attachment_max_bytes: int = 5_000_000  # a larger PDF is linked, not attached

    def close(self) -> None:
        """End the sessions the adapters keep open between invoices (SMTP: QUIT)."""
        if self.mailer is not None:
            self.mailer.close()

    def enabled(self) -> tuple[Step, ...]:
        """The delivery steps that are on, in the order they run."""
        return tuple(step for step, adapter in self._adapters() if adapter is not None)

    def _adapters(self) -> tuple[tuple[Step, object], ...]:
        return ((Step.S3, self.store), (Step.STRIPE, self.payments), (Step.EMAIL, self.mailer))
