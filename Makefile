# Set-up and the two entry points: `make demo` (the embedded pipeline via kfp.local) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
export HF_HUB_OFFLINE := 1
export DS_BUILD_OPS := 0

.PHONY: install demo test compile

$(BIN)/sherlock: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[all,dev]"
	touch $@

install: $(BIN)/sherlock

demo: install
	$(BIN)/python -m pipelines.run_local

compile: install
	$(BIN)/python -m pipelines.sherlock

test: install
	$(BIN)/pytest -q
