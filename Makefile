# The two commands of the README:
#   make figures [PROFILE=tiny|smoke|paper]   every artifact and figure of a profile, through Snakemake (CORES=2)
#   make test                                   the test suite (unit, pipeline on `smoke`, notebooks)
#   make notebooks                              re-execute paper_nbs/ on `smoke` and strip them for committing
PROFILE ?= tiny
PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0: a CPU build on machines without CUDA wheels in reach, the CUDA build elsewhere.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: figures test notebooks install clean-results

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[workflow,dev,interop]"
	touch $@

install: $(BIN)/.installed

figures: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES) --config profile=$(PROFILE)

# The smoke results first (a no-op when up to date): nbval runs every notebook in paper_nbs/ on them.
test: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES) --config profile=smoke
	$(BIN)/python -m pytest -q

# Committed notebooks keep execution counts (nbval skips the comparison of cells without one) and outputs
# only in cells tagged keep_output, which are also the cells nbval compares; cell tags are never stripped.
NBSTRIP_KEYS := metadata.papermill cell.metadata.papermill metadata.jupytext metadata.language_info.version
notebooks: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES) evaluated --config profile=smoke
	$(BIN)/jupyter execute --inplace paper_nbs/*.ipynb
	$(BIN)/nbstripout --keep-count --extra-keys "$(NBSTRIP_KEYS)" paper_nbs/*.ipynb

clean-results:
	rm -rf results/$(PROFILE)
