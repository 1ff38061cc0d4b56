#!/usr/bin/env bash
# The GPU device check in one command, for a machine with Python >= 3.11, PyTorch and a CUDA GPU
# but maybe no internet (docs/gpu.md): installs the project from wheelhouse/ (made beforehand by
# tools/prepare_offline.py) into a virtual environment that sees the machine's PyTorch, then runs
# the CUDA tests and the device benchmark. Output: stdout, and under ${OUT:-device-check}/.
#
#     bash tools/device_check.sh            # ~5-8 minutes on one H100/H200-class GPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device-check}"
mkdir -p "$OUT"
VENV="${DEVICE_VENV:-.venv-device}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'device_check: error: PyTorch sees no CUDA GPU')"
[ -d wheelhouse ] || { echo "device_check: error: no wheelhouse/ (run tools/prepare_offline.py where there is internet)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    # --system-site-packages: the machine's torch/torchvision/numpy, which the wheelhouse leaves out.
    "$PYTHON" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links wheelhouse --no-deps wheelhouse/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the dcl package from this checkout, not installed
export DCL_TEST_TOY_DATASETS="$PWD/wheelhouse/toy"   # made by prepare_offline (no scipy/opencv here)
"$VENV/bin/python" -m dcl info | tee "$OUT/info.txt"
status=0
"$VENV/bin/python" -m pytest -m gpu -p no:cacheprovider -q tests/training/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.txt" || status=1
"$VENV/bin/python" benchmarks/bench_gpu.py 2>&1 | tee "$OUT/bench_gpu.txt" || status=1
exit "$status"
