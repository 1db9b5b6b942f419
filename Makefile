# Quick start: `make demo` (set up and run the emulated cluster demo), `make test` (set up and
# run the tests). Both work from a fresh clone as root on Debian with Python 3.11.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint typecheck check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Programs the tests drive for real: socat (virtual serial lines), chromium (browser tests),
# the PostgreSQL server (the records store's tests start one on 127.0.0.1).
system-deps:
	@missing=""; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		else \
			echo "please install:$$missing (e.g. sudo apt-get install$$missing)"; exit 1; \
		fi; \
	fi

demo: setup
	$(BIN)/apis demo

test: setup system-deps
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

typecheck: setup
	$(BIN)/mypy src

check: test lint typecheck

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
