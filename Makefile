# make demo  -- train the digits demo and write its pictures into demo/
# make test  -- lint and run the test suite
# make check-wheel -- build the wheel, install it into a fresh venv, run demo / sample / feature networks from it
# Both create or update the virtual environment .venv; torch is pinned (override: make test TORCH=2.5.1).
PYTHON ?= python3
TORCH ?= 2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-torch-$(TORCH)
EXTRAS ?= dev,text,interop,retrieval,ui

.PHONY: venv test demo lint bench clean check-wheel

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "torch==$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]" "torch==$(TORCH)"
	$(BIN)/python -c "import sys, torch; v = torch.__version__; sys.exit(0 if v.split('+')[0] == '$(TORCH)' else f'an extra replaced torch $(TORCH) by {v}')"
	rm -f $(VENV)/.stamp-torch-*
	touch $@

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q tests

demo: venv
	$(BIN)/difflab demo --out demo

# build the wheel and run it from a fresh virtual environment without the checkout
check-wheel: venv
	PYTHON=$(PYTHON) TORCH=$(TORCH) scripts/check_wheel.sh $(BIN)/python

bench: venv
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,bench]"
	$(BIN)/python benchmarks/samplers.py

clean:
	rm -rf $(VENV) demo .pytest_cache build dist
