"""billing: usage aggregation and monthly invoicing, one job per process, scheduled by cron or Kubernetes."""

__version__ = "0.1.0"
