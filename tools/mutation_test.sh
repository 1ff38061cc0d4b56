#!/usr/bin/env bash
# Mutation testing of the numerical core (issue 16): dcl/model/loss.py, dcl/model/heads.py, dcl/evaluation/errors.py,
# dcl/report/analysis.py against the fast tests that cover them. Configuration: [tool.mutmut] in
# pyproject.toml. Not part of CI: all 2202 mutants take well over an hour on one CPU core (see
# docs/testing.md for measured times); a seeded random sample per module takes minutes.
#
#   pip install mutmut==3.8.1        # once; not a project dependency
#   tools/mutation_test.sh           # all mutants; prints the counts per module
#   tools/mutation_test.sh 'dcl.model.loss.*'   # only the mutants whose names match (mutmut's globs)
#   tools/mutation_test.sh --sample 40 --seed 16 --module dcl/model/heads.py=25
#                                    # the same random 40 mutants per module every time (tools/mutation_sample.py)
#   tools/mutation_test.sh --set issue22 --sample 20 --seed 22
#                                    # another module set and test selection: [tool.dcl-mutation.issue22]
#                                    # replaces keys of [tool.mutmut] (tools/mutmut_set.py); --set goes first
#
# Results stay in mutants/ (git-ignored): `mutmut results` lists the survivors, `mutmut show NAME`
# shows one (after a --set run: `MUTATION_SET=issue22 python tools/mutmut_set.py results|show NAME`). Tests that start `dcl` as a subprocess run the unmutated code (PYTHONPATH is the
# repository), so only in-process tests can kill a mutant.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v mutmut >/dev/null || { echo "mutmut not found: pip install mutmut==3.8.1" >&2; exit 2; }
export PYTHONPATH="$PWD" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [[ "${1:-}" == --set ]]; then
    [[ -n "${2:-}" ]] || { echo "--set needs a name: [tool.dcl-mutation.NAME] in pyproject.toml" >&2; exit 2; }
    export MUTATION_SET="$2"
    shift 2
    python tools/mutmut_set.py --help >/dev/null || exit 2  # an unknown set is named before mutants/ is removed
fi
rm -rf mutants  # mutmut reuses earlier verdicts and test coverage otherwise
mkdir mutants
if [[ "${1:-}" == --sample ]]; then
    exec nice -n 10 python tools/mutation_sample.py --jobs "${MUTMUT_JOBS:-1}" "$@"
fi
nice -n 10 python tools/mutmut_set.py run --max-children "${MUTMUT_JOBS:-1}" "$@" >mutants/run.log 2>&1 || {
    tail -n 20 mutants/run.log >&2; echo "mutmut failed (log: mutants/run.log)" >&2; exit 1; }
python - <<'PY'
import collections, json, pathlib
from mutmut.stats import status_by_exit_code
counts = collections.defaultdict(collections.Counter)
for meta in pathlib.Path("mutants").rglob("*.py.meta"):
    source = str(meta.relative_to("mutants"))[:-len(".meta")]
    for code in json.loads(meta.read_text())["exit_code_by_key"].values():
        counts[source][status_by_exit_code[code]] += 1
print(f"{'module':24} {'mutants':>7} {'killed':>7} {'survived':>8} {'no tests':>8} {'timeout':>7}  kill rate")
for source, c in sorted(counts.items()):
    total = sum(c.values())
    print(f"{source:24} {total:7} {c['killed']:7} {c['survived']:8} {c['no tests']:8} {c['timeout']:7}  "
          f"{c['killed'] / total:.1%}")
PY
