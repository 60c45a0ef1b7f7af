# The two commands of the README:
#   make figures [PROFILE=tiny|smoke|paper]   every artifact and figure of a profile, through Snakemake
#   make test                                   the test suite (unit, pipeline on `smoke`, notebooks)
PROFILE ?= tiny
PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0: a CPU build on machines without CUDA wheels in reach, the CUDA build elsewhere.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
CORES ?= 1

.PHONY: figures test install clean-results

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[workflow,dev,interop]"
	touch $@

install: $(BIN)/.installed

figures: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES) --config profile=$(PROFILE)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

clean-results:
	rm -rf results/$(PROFILE)
