"""Cron schedules as data: the seed's six-field seconds-first expressions, their five-field form
for crontab and Kubernetes, a human description and the next run times (cronsim)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    job: str
    configured: str  # as written in the configuration
    five_field: str  # what crontab and a Kubernetes CronJob take

    @property
    def six_field(self) -> str:
        return f"0 {self.five_field}"

    def describe(self) -> str:
        from cronsim import CronSim

        text = CronSim(self.five_field, datetime(2000, 1, 1, tzinfo=UTC)).explain()
        return f"{text} (UTC)"

    def next_runs(self, now: datetime, count: int) -> list[datetime]:
        runs: list[datetime] = []
        for moment in self._iterate(now):
            runs.append(moment)
            if len(runs) == count:
                break
        return runs

    def fires_at(self, moment: datetime) -> bool:
        """Whether cron would start this job in the minute of `moment` (minute resolution)."""
        minute = moment.astimezone(UTC).replace(second=0, microsecond=0)
        return next(self._iterate(minute - timedelta(seconds=1))) == minute

    def _iterate(self, after: datetime) -> Iterator[datetime]:
        from cronsim import CronSim

        return CronSim(self.five_field, after.astimezone(UTC))


def parse_schedule(job: str, expression: str) -> Schedule:
    """Six fields (seconds first, seconds must be 0) or five; validated by cronsim."""
    from cronsim import CronSim, CronSimError

    fields = expression.split()
    if len(fields) == 6:
        if fields[0] not in ("0", "00"):
            raise ScheduleError(f"{job} schedule {expression!r}: the seconds field must be 0 "
                                "(cron and Kubernetes start jobs on whole minutes)")
        fields = fields[1:]
    elif len(fields) != 5:
        raise ScheduleError(f"{job} schedule {expression!r}: use six fields, seconds first "
                            "(e.g. '0 0 0 1 * *'), or five")
    five = " ".join(fields)
    try:
        CronSim(five, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ScheduleError(f"{job} schedule {expression!r}: not a valid cron expression ({exc})") from None
    return Schedule(job, expression, five)
