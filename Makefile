# The targets the README names. Everything installs into .venv (gitignored) and caches the
# Go-built binaries under ~/.cache/overshoot-operator (override with OVERSHOOT_CACHE_DIR).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test unit lint demo binaries image cluster-up cluster-down clean chart-sync

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# Debian packages of the media tests and the demo: iproute2 (network namespaces for
	# WebRTC) and the GStreamer RTSP server (a test camera). Installs only what is missing.
	$(BIN)/python -c 'from overshoot_localstack.rtsp import ensure_debian_packages as e; e()'
	touch $@

# Build (or reuse from the cache) every Go binary the tests run.
binaries: setup
	$(BIN)/overshoot-localstack build

# The image from the Dockerfile, with no Docker engine or registry: Debian's buildah and runc
# (apt-installed when missing, with debootstrap), on a bookworm base made by debootstrap.
# Both live in buildah's storage and are rebuilt only when missing or when the build context
# changed; prints the image and the OCI archive of it for `ctr images import`. Needs root.
image: setup
	$(BIN)/overshoot-localstack image

# The whole suite: lint, types, unit, contract, integration and e2e tiers; the image first,
# for the tests that run it on a real node.
test: setup binaries image lint
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest -m unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: setup
	$(BIN)/overshoot-localstack demo

cluster-up: setup binaries
	$(BIN)/overshoot-localstack cluster up

cluster-down: setup
	$(BIN)/overshoot-localstack cluster down

# The Helm chart's copies of deploy/crds/ and the deploy/rbac/ rules (tests/helm/ checks them).
chart-sync: setup
	$(BIN)/python hack/sync-chart.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
