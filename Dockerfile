# syntax=docker/dockerfile:1
# One image, two entry points: `overshoot-operator` (the default) and `overshoot-publisher`
# (the operator's publisher Pods run it as their command). PyAV's wheel bundles FFmpeg, so
# neither stage installs Debian packages.
#
#   docker build -t overshoot-operator:dev .
#   docker run --rm overshoot-operator:dev --help
#   docker run --rm --entrypoint overshoot-publisher overshoot-operator:dev
#   make image    # no Docker engine or registry: buildah, on a local base (see below)
#
# Both stages use the same base, pinned to an exact patch release: the venv's interpreter
# is a symlink into it. BASE may name another Python 3.11 image with `python3` on PATH and
# the venv module: with no registry, `make image` builds on a Debian bookworm base of its
# own (localstack/overshoot_localstack/image.py). tests/packaging/test_dockerfile.py lints
# this file and replays the builder's RUN steps against a fresh venv.
ARG BASE=python:3.11.13-slim-bookworm

FROM ${BASE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# setuptools needs every package folder named in pyproject.toml to build the wheel; the
# emulator and localstack modules cost a few hundred kilobytes and none of their extras.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY publisher/ publisher/
COPY emulator/ emulator/
COPY localstack/ localstack/
COPY plugin/ plugin/

# The wheel itself, not the source tree: the image holds exactly what a user installs. The
# pin keeps pip from preferring any other index's package of the same name (a test keeps it
# equal to pyproject.toml's version). `python3`, not `python`: both bases have it (the
# official image in /usr/local/bin, Debian's in /usr/bin, which has no `python`), and the
# venv's interpreter links to it, so the venv works in the final stage on the same base.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels /src \
    && /opt/venv/bin/pip install --find-links /wheels "overshoot-operator[publisher]==0.1.0"

FROM ${BASE}

LABEL org.opencontainers.image.title="overshoot-operator" \
      org.opencontainers.image.description="Overshoot operator and publisher" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /opt/venv /opt/venv

# The publisher Pod runs with a read-only root filesystem: no bytecode writes at run time.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The uid/gid the publisher Pod's securityContext names (manifests.PUBLISHER_UID); numeric,
# so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532

ENTRYPOINT ["overshoot-operator"]
