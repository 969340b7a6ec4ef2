# Two commands: `make demo` and `make test`. Both create .venv and install what they need;
# `make lint` (ruff and mypy, as configured in pyproject.toml) adds the lint tools to it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LINTED := $(VENV)/.lint-installed

.PHONY: demo demo-ui demo-fleet test bench lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m shadowproxy.demo

# the admin UI over the last demo's store (upstreams are gone; the stored results stay)
demo-ui: $(STAMP)
	DEMO_DIR=$(CURDIR)/out/demo DEMO_ADMIN_PORT=8081 $(BIN)/python -m shadowproxy run -c config/demo.yaml

# a fleet on loopback: Debian's redis-server and PostgreSQL, two sidecars, two comparators
demo-fleet: $(STAMP)
	$(BIN)/python -m shadowproxy.demo.fleet

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

$(LINTED): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[lint]'
	touch $(LINTED)

lint: $(LINTED)
	$(BIN)/ruff check $(RUFF_ARGS)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/compare
	$(BIN)/python bench/run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache out
