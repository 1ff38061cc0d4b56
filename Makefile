# Entry points that do all set-up themselves: `make demo`, `make test` and `make test-all`.
# Everything installs into .venv/ at the repo root; the stamp makes a second call install nothing
# (it is redone when pyproject.toml, constraints.txt or the detectron2 installer change).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dcl-installed
PYTEST_ARGS ?=

.PHONY: install test test-all demo lint format clean tex

$(STAMP): pyproject.toml constraints.txt tools/install_detectron2.py tools/detectron2-sdist.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,wandb,mlflow]'
	$(BIN)/python tools/install_detectron2.py
	$(BIN)/dcl info
	touch $@

install: $(STAMP)

# The fast tier (minutes, no root): unit tests and the in-process and short subprocess checks.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e and not slurm" $(PYTEST_ARGS)

# Everything, as CI runs it (~45 minutes on 2 cores): also the end-to-end trainings and workflow
# runs, the real-Slurm tests (as root: they install and start a one-node cluster) and the LaTeX
# compile test.
test-all: $(STAMP) tex
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A small TeX (Debian's texlive-latex-base and -recommended: pdflatex, booktabs, geometry) for the
# test that compiles every report table. Installed when missing and possible (root with apt-get,
# as in CI); elsewhere that test is skipped, and fails under CI=true.
tex:
	@command -v pdflatex >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      texlive-latex-base texlive-latex-recommended; \
	  else echo "note: pdflatex not found and cannot be installed here: the LaTeX compile test is skipped"; fi; }

# The whole workflow on the synthetic toy data, on this machine's CPUs (a few minutes):
# toy data, 11 trainings (2 seeds per Mask R-CNN experiment, 1 per RefineMask one), evaluation,
# error analyses, tables and figures in results/toy/.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/local --config preset=toy
	@echo "Tables, figures and the summary are in results/toy/ (start with results/toy/README.md)."

# Lint and format checks (ruff for the Python, snakefmt for the workflow; settings in pyproject.toml).
# `make format` applies both formatters.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile workflow/

clean:
	rm -rf $(VENV) .pytest_cache
