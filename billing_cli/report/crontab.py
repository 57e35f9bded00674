"""`billing schedule --format crontab`: a whole user crontab for a host without Kubernetes, the
configured schedules in the lines of crontab.example (which is this text with the default
configuration; tests/test_deploy.py checks they are equal byte for byte)."""

from __future__ import annotations

from collections.abc import Sequence

from ..schedules import Schedule

BILLING = "/opt/billing/venv/bin/billing"
FLOCK = "/usr/bin/flock"

HEADER = """\
CRON_TZ=UTC
# billing on a host without Kubernetes: a user crontab for the `billing` user.
#   crontab -u billing crontab.example     (or: billing schedule --format crontab | crontab -u billing -)
# (User-crontab format: no user column. Do not copy it into /etc/cron.d as is.)
#
# - Time zone: the schedules are UTC, like the program. CRON_TZ=UTC (first line) makes cronie
#   (RHEL, Fedora, Amazon Linux, Arch) evaluate them in UTC whatever the host's zone. Debian's and
#   Ubuntu's cron ignore CRON_TZ: there the host itself must run in UTC
#   (timedatectl set-timezone Etc/UTC).
# - Paths: cron's PATH is minimal, so every program below is named by its absolute path. The
#   program is installed in a virtualenv without the `embedded` extra:
#     python3.11 -m venv /opt/billing/venv && /opt/billing/venv/bin/pip install /path/to/billing
# - Environment: the program reads its settings and secrets from the file named by
#   BILLING_ENV_FILE (the .env format of .env.example; owner billing, mode 0600), so no shell
#   has to parse passwords. Set BILLING_REQUIRE_DATABASE_URL=true in it: a missing DATABASE_URL
#   is then a configuration error (exit 3), never an embedded database. To export the file into
#   the environment instead (quote values with spaces; `$` in a value is expanded):
#     /bin/sh -c 'set -a; . /etc/billing/billing.env; set +a; exec /opt/billing/venv/bin/billing aggregate-hourly'
# - Overlap: `flock -n /run/lock/billing-<job>.lock` skips a start while the previous run of the
#   same job still holds the lock (the program's own lock, exit 7, is the second line of defence).
# - Output: appended to /var/log/billing/<job>.log (create /var/log/billing owned by billing;
#   rotate with logrotate). One JSON object a line, since there is no terminal (LOG_FORMAT=auto);
#   LOG_FORMAT=plain in the env file gives key=value lines.
# - Failures: nothing retries under cron (`billing exit-codes` lists the exit codes). aggregate-hourly
#   catches up on its next run (it rolls up the hours a missed run left, among the 2 before its
#   window, and every hour whose events changed). After exit 4
#   (database unavailable), 6 (partial) or 9 (interrupted by SIGTERM) from invoice-monthly, rerun
#   it by hand: organizations already invoiced are skipped and only missing steps are done.
# - Schedules: from the configuration (*_SCHEDULE). This text is `billing schedule --format crontab`;
#   after changing a schedule, generate it again rather than editing the lines.
#
# Optional dead man's switch (e.g. healthchecks.io; alert when a ping is missing or says fail):
# append to a job line, after `2>&1`,
#   && curl -fsS -m 10 --retry 3 -o /dev/null https://hc-ping.com/<uuid> || curl -fsS -m 10 --retry 3 -o /dev/null https://hc-ping.com/<uuid>/fail
# for example:
# {invoice_line} && curl -fsS -m 10 --retry 3 -o /dev/null https://hc-ping.com/<uuid> || curl -fsS -m 10 --retry 3 -o /dev/null https://hc-ping.com/<uuid>/fail

SHELL=/bin/sh
PATH=/usr/bin:/bin
BILLING_ENV_FILE=/etc/billing/billing.env
"""

# Each job's block: what it does, after "<job>, <when>:". legacy-run's line is written commented
# out: it bills the same month as invoice-monthly, so only one of the two may be active.
_WHAT = {
    "aggregate-hourly": ["the previous hour's usage."],
    "invoice-monthly": ["every billing period that has ended and",
                        "is not invoiced yet (calendar months on the 1st, anchored periods on their day)."],
    "reconcile": ["a read-only check of the previous month (exit 11 when",
                  "something differs; `billing reconcile --month YYYY-MM` shows what and what to do)."],
    "legacy-run": ["the older all-in-one",
                   "job, configured by RUN_SCHEDULE (five-field form here). It bills the same month as",
                   "invoice-monthly: NEVER run both. Only for existing setups configured by RUN_SCHEDULE: then",
                   "comment invoice-monthly out and uncomment this line."],
}
_ORDER = ("aggregate-hourly", "invoice-monthly", "reconcile", "legacy-run")
_COMMENTED_OUT = {"legacy-run"}


def job_line(schedule: Schedule) -> str:
    """The crontab entry of one job: its five-field schedule, flock against overlap, the log."""
    job = str(schedule.job)
    return (f"{schedule.five_field}  {FLOCK} -n /run/lock/billing-{job}.lock {BILLING} {job} "
            f">> /var/log/billing/{job}.log 2>&1")


def crontab_text(schedules: Sequence[Schedule]) -> str:
    by_job = {str(s.job): s for s in schedules}
    if set(by_job) != set(_ORDER):
        raise ValueError(f"a crontab needs the schedules of {', '.join(_ORDER)}, not {', '.join(sorted(by_job))}")
    parts = [HEADER.format(invoice_line=job_line(by_job["invoice-monthly"]))]
    for job in _ORDER:
        schedule = by_job[job]
        when = schedule.describe()
        what = _WHAT[job]
        lines = [f"# {job}, {when[0].lower()}{when[1:]}: {what[0]}", *(f"# {line}" for line in what[1:])]
        lines.append(("# " if job in _COMMENTED_OUT else "") + job_line(schedule))
        parts.append("\n" + "\n".join(lines) + "\n")
    return "".join(parts)
