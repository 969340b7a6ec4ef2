# Two commands: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-ui test bench lint clean venv

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

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/compare
	$(BIN)/python bench/run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis out
