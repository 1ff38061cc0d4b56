#!/usr/bin/env bash
# Completes the conda environment workflow/envs/dcl.yaml (the repository's environment.yml) when
# Snakemake builds it for --use-conda: installs this repository's `dcl` package and detectron2
# into it (README, "Installation"). Snakemake runs this in its working directory, the repository
# root, with the new environment active.
set -euo pipefail
python -m pip install --quiet -c constraints.txt -e .
python tools/install_detectron2.py
