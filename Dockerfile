# syntax=docker/dockerfile:1
# riskstream worker image: `docker build -t riskstream .`, then `docker run riskstream worker`.

# ---- build: install the project and its dependencies into a virtualenv -----------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# README.md* : optional (pyproject names it as readme; the glob keeps COPY working without it).
COPY pyproject.toml requirements.lock README.md* ./
COPY engine ./engine
COPY agents ./agents
COPY features ./features
COPY models ./models
COPY rules ./rules
COPY replay ./replay
RUN pip install --upgrade pip \
 && pip install -c requirements.lock .

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim

# libgomp1: OpenMP runtime that the LightGBM wheel links against (not in the slim image).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 riskstream \
 && useradd --system --uid 10001 --gid riskstream --home-dir /home/riskstream --create-home \
      --shell /usr/sbin/nologin riskstream \
 && mkdir -p /data \
 && chown riskstream:riskstream /data

COPY --from=build /opt/venv /opt/venv
# The rule set ships with the image (version-controlled, hot-reloaded from this directory).
COPY --chown=root:root rules /app/rules

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    RISKSTREAM_DATA_DIR=/data \
    RISKSTREAM_RULES_DIR=/app/rules \
    RISKSTREAM_WEB_HOST=0.0.0.0 \
    RISKSTREAM_WEB_PORT=6066

WORKDIR /home/riskstream
USER riskstream

# Model registry, checkpoints and run files.
VOLUME ["/data"]
# Worker web server: /metrics for Prometheus.
EXPOSE 6066

ENTRYPOINT ["riskstream"]
CMD ["worker"]
