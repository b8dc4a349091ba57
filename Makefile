# reach: two commands for a newcomer (make run, make test); the rest for developers.
# Works on a fresh machine with only Python 3.11+ and make: the virtualenv is built on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
DEMO_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test check format lint types demo bench clean

help:
	@echo "make run     start reach (all services, one process, SQLite in ./reach-data)"
	@echo "make test    run the whole test suite"
	@echo "make check   format check, lint, strict types, then the tests"
	@echo "make format  rewrite the code in the project's format"
	@echo "make bench   the benchmarks, each against a baseline measured in the same run"
	@echo "make demo    synthetic cases and consultants for the dashboard (DEMO_ARGS=\"--rate 240\")"

$(STAMP): pyproject.toml
	@sh scripts/bootstrap-venv.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/reach serve

# The suite runs on TEST_WORKERS processes at once (pytest-xdist; each has its own
# PostgreSQL database), then the tests marked `alone` (they restart the PostgreSQL server
# every worker uses) by themselves. Exit status 5 is pytest's "no tests selected": a
# PYTEST_ARGS subset may hold none of one kind. Coverage comes from every process.
test: $(STAMP)
	@$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest -n $(TEST_WORKERS) -m "not alone" $(PYTEST_ARGS) \
		|| [ $$? -eq 5 ]
	$(BIN)/python -m coverage run -m pytest -m alone $(PYTEST_ARGS) || [ $$? -eq 5 ]
	@$(BIN)/python -m coverage combine -q
	$(BIN)/python -m coverage report --fail-under=90 --skip-covered --skip-empty

format: $(STAMP)
	$(BIN)/ruff format services tests migrations bench
	$(BIN)/ruff check --fix services tests migrations bench

lint: $(STAMP)
	$(BIN)/ruff format --check services tests migrations bench
	$(BIN)/ruff check services tests migrations bench

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

# Each benchmark prints its results beside a baseline measured in the same run
# (bench/RESULTS.md keeps the latest); wrk (Debian package wrk) drives the HTTP ones.
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
		&& apt-get install -y -qq wrk >/dev/null; } || echo "wrk is missing: install it (apt-get install wrk)"
	$(BIN)/python -m bench.submit_throughput
	$(BIN)/python -m bench.submit_cpu
	$(BIN)/python -m bench.routing_latency
	$(BIN)/python -m bench.delivery_passes
	$(BIN)/python -m bench.statement_costs
	$(BIN)/python -m bench.case_parts
	$(BIN)/python -m bench.ws_fanout
	$(BIN)/python -m bench.ws_connections
	$(BIN)/python -m bench.verify_trail

demo: $(STAMP)
	$(BIN)/reach demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
