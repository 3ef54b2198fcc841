# bnn_nested: `make demo` and `make test` work on a fresh clone (they create .venv when missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# test workers (pytest-xdist); the suite is measured on 2 cores. JOBS=0 runs in one process.
JOBS ?= 2

.PHONY: demo test test-fast lint doctest install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,onnx,tensorboard,hf,timm]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/bnn-nested train --config configs/digits_mlp.yaml --out runs/demo --quiet
	$(BIN)/bnn-nested evaluate runs/demo

# the whole suite (4 min 52 s - 5 min 47 s on 2 cores with 2 workers, 7 min 11 s in one), 10 slowest
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --durations 10

# everything not marked slow (under 1 minute on 2 cores): the loop while editing
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) -m "not slow" --durations 5

# the >>> examples in bnn_nested's docstrings, run as tests
doctest: $(STAMP)
	$(BIN)/python -m pytest -q --doctest-modules bnn_nested

lint: $(STAMP)
	$(BIN)/ruff check bnn_nested tests examples benchmarks
	$(BIN)/ruff format --check bnn_nested tests examples benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
