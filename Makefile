# bnn_nested: `make demo` and `make test` work on a fresh clone (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/bnn-nested train --config configs/digits_mlp.yaml --out runs/demo --quiet
	$(BIN)/bnn-nested evaluate runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check bnn_nested tests examples benchmarks
	$(BIN)/ruff format --check bnn_nested tests examples benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
