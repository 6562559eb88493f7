# syntax=docker/dockerfile:1
# driftline worker image:  docker build -t driftline:0.1.0 .
#   docker run --rm -v $PWD/ops/compose/driftline.yaml:/etc/driftline/driftline.yaml:ro driftline:0.1.0
# Stage 1 builds the project into a virtualenv; stage 2 copies only that venv
# and the contracts onto the same slim base, and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# -- build ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# pyproject.toml names README.md as the package's readme: both are needed.
COPY pyproject.toml README.md ./
# driftline/ links to the folders below: the wheel ships them as driftline.*
COPY driftline ./driftline
COPY streams ./streams
COPY features ./features
COPY drift ./drift
COPY sinks ./sinks
COPY schemas ./schemas
RUN pip install --upgrade pip \
    && pip install . \
    && driftline --version

# -- runtime -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG DRIFTLINE_UID=10001
LABEL org.opencontainers.image.title="driftline" \
      org.opencontainers.image.description="Streaming features and drift detection on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid ${DRIFTLINE_UID} driftline \
    && useradd --system --uid ${DRIFTLINE_UID} --gid driftline \
       --home-dir /var/lib/driftline --shell /usr/sbin/nologin driftline \
    && mkdir -p /etc/driftline /var/lib/driftline \
    && chown driftline:driftline /var/lib/driftline
COPY --from=build /opt/venv /opt/venv
# Contracts at a fixed path, so configs can name them absolutely
# (ops/compose/driftline.yaml, ops/k8s/configmap.yaml).
COPY schemas/contracts /opt/driftline/contracts
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The config is mounted at /etc/driftline/driftline.yaml (compose: a bind
# mount; Kubernetes: a ConfigMap).  /var/lib/driftline is the user's writable
# home; point DRIFTLINE_WORKER__DATA_DIR at it (or at a volume) when the root
# file system is read-only.
WORKDIR /var/lib/driftline
USER ${DRIFTLINE_UID}:${DRIFTLINE_UID}
# metrics.port: /metrics, /healthz, /readyz
EXPOSE 9464
# /healthz answers 200 while the process runs (readiness is /readyz).  The port
# follows DRIFTLINE_METRICS__PORT when set; a port changed only in the config
# file needs the same variable set for this check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('DRIFTLINE_METRICS__PORT', '9464'); sys.exit(0 if u.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["driftline"]
CMD ["worker", "-c", "/etc/driftline/driftline.yaml"]
