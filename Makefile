# Two entry points (see README): `make demo` and `make test`. Both create the virtual
# environment on first use (pinned torch CPU wheel via constraints.txt) and reuse it after.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.probinfer-installed
EXTRAS ?= dev,llm

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/probinfer scale

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check .

# Peer libraries for benchmarks/ (not needed by tests). `particles` declares numpy<2 but
# runs on numpy 2, so it is installed without its dependency pins.
bench-env: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt blackjax "mapie>=1.6" scikit-learn
	$(BIN)/python -m pip install --quiet --no-deps particles
	$(BIN)/python -m pip install --quiet -c constraints.txt numba

clean-venv:
	rm -rf $(VENV)
