# The two commands of the README:
#   make figures [PROFILE=tiny|smoke|synth|paper]   every artifact, figure and table of a profile (Snakemake)
#   make test                                        lint, the smoke workflow, the test suite (unit, pipeline, nbval)
# and the others:
#   make fast        the fast tier of the tests (no smoke workflow, no slow tests)
#   make report      figures/<profile>/report.html: every figure and table with its caption (Snakemake's report)
#   make lab         JupyterLab on the notebooks (they open the `tiny` results by default)
#   make long        the training-length check: tiny trained 5x longer, a variant in figures/tiny+long/
#   make notebooks   re-execute paper_nbs/ on `smoke` and strip them for committing
#   make lock        refresh requirements/lock.txt and environment.yml (needs the package index)
PROFILE ?= tiny
PYTHON ?= python3
VENV ?= .venv
# torch 2.13.0: the CPU build on machines without CUDA wheels in reach, the CUDA build elsewhere. Installed on its
# own: the lock holds every other package, with hashes.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
CORES ?= 2
SNAKEMAKE = $(BIN)/python -m saelib.workflow_cli

.PHONY: figures test fast report lab long notebooks install lock clean-results

$(BIN)/.installed: pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements/lock.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(BIN)/.installed

# A Snakemake run killed earlier leaves a lock and incomplete outputs: `saelib.workflow_cli` unlocks when no other
# Snakemake runs in this checkout, and reruns incomplete jobs.
figures: $(BIN)/.installed
	$(SNAKEMAKE) --cores $(CORES) --config profile=$(PROFILE)

test: $(BIN)/.installed
	$(BIN)/ruff check saelib tests
	$(SNAKEMAKE) --lint --config profile=smoke
	$(SNAKEMAKE) --cores $(CORES) --config profile=smoke
	$(SNAKEMAKE) --cores $(CORES) --config profile=synth_smoke
	$(BIN)/python -m pytest -q

fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow" tests

report: $(BIN)/.installed
	$(SNAKEMAKE) --cores $(CORES) --config profile=$(PROFILE)
	$(SNAKEMAKE) --config profile=$(PROFILE) --report figures/$(PROFILE)/report.html

lab: $(BIN)/.installed
	$(BIN)/jupyter lab paper_nbs

long: $(BIN)/.installed
	$(SNAKEMAKE) --cores $(CORES) --config profile=tiny 'set=train.tokens=7500000,variant=long'
	$(BIN)/python -m saelib.tables movement tiny 'train.tokens=7500000,variant=long'

# Committed notebooks keep execution counts (nbval skips the comparison of cells without one) and outputs
# only in cells tagged keep_output, which are also the cells nbval compares; cell tags are never stripped.
NBSTRIP_KEYS := metadata.papermill cell.metadata.papermill metadata.jupytext metadata.language_info.version
notebooks: $(BIN)/.installed
	$(SNAKEMAKE) --cores $(CORES) evaluated --config profile=smoke
	$(SNAKEMAKE) --cores $(CORES) evaluated --config profile=synth_smoke
	SAELIB_PROFILE=smoke SAELIB_SYNTH_PROFILE=synth_smoke $(BIN)/jupyter execute --inplace paper_nbs/*.ipynb
	$(BIN)/nbstripout --keep-count --extra-keys "$(NBSTRIP_KEYS)" paper_nbs/*.ipynb

# uv resolves against the package index; torch is pinned to the CPU wheel on this disk (--find-links) so that the
# lock holds no CUDA packages, and is left out of it (installed on its own, as above).
lock: $(BIN)/.installed
	echo "torch==2.13.0+cpu" > .torch-constraint.txt
	$(BIN)/uv pip compile pyproject.toml --extra workflow --extra dev --extra interop --generate-hashes \
	  --find-links /opt/wheels -c .torch-constraint.txt --no-emit-package torch --python-version 3.11 \
	  --custom-compile-command "make lock" -o requirements/lock.txt
	rm -f .torch-constraint.txt
	$(BIN)/python requirements/environment.py "$(TORCH)"

clean-results:
	rm -rf results/$(PROFILE)
