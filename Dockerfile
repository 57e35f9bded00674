# syntax=docker/dockerfile:1
# The `billing` image for Kubernetes CronJobs (deploy/k8s). One job per container run:
#   docker run --rm -e DATABASE_URL=... billing:0.1.0 aggregate-hourly
# Built without the `embedded` extra: the image always needs DATABASE_URL (a missing one is exit 3).

# --- builder: a virtualenv with the locked dependencies (all binary wheels) and the package ---
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# The dependencies exactly as locked, every file checked against its hash (requirements/refresh
# regenerates the lock); their layer is rebuilt only when the lock changes.
COPY requirements/runtime.txt requirements/runtime.txt
RUN /opt/venv/bin/pip install --require-hashes -r requirements/runtime.txt
# Then the package alone, with the locked setuptools: nothing else is downloaded.
COPY pyproject.toml README.md ./
COPY billing_cli/ billing_cli/
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

# --- final: the same Python, the venv, an unprivileged user; no compilers, no pip cache ---
FROM python:3.11-slim
RUN groupadd --system --gid 10001 billing \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin billing
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric, so Kubernetes' runAsNonRoot can verify it (the pods also set runAsUser 10001).
USER 10001:10001
# The root filesystem is read-only in the pods; /tmp is their emptyDir and the only place the
# program may write (it writes nothing else when DATABASE_URL is set).
WORKDIR /tmp
ENTRYPOINT ["billing"]
CMD ["--help"]
