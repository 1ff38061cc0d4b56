"""Run a seeded random sample of mutants per module and print the kill rate (issue 16).

Called by ``tools/mutation_test.sh --sample N [--seed S]``. The same N, seed and source give the same
mutants: the sample is drawn from the sorted mutant names of each mutated module that some test covers
(mutmut's "no tests" mutants run only in worker processes or subprocesses, see docs/testing.md).

    python tools/mutation_sample.py --sample 40 --seed 16 [--module dcl/model/heads.py=10 ...]
    MUTATION_SET=issue22 python tools/mutation_sample.py --sample 20 --seed 22   # another module set
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import random
import os
import subprocess
import sys

from mutmut.stats import status_by_exit_code

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from mutmut_set import coverage_mutant  # noqa: E402

MUTANTS = pathlib.Path("mutants")
STATS = MUTANTS / "mutmut-stats.json"


def mutants_by_module() -> dict[str, list[str]]:
    """Names of all generated mutants, per mutated source file (e.g. ``dcl/model/loss.py``)."""
    return {
        str(meta.relative_to(MUTANTS))[: -len(".meta")]: sorted(json.loads(meta.read_text())["exit_code_by_key"])
        for meta in sorted(MUTANTS.rglob("*.py.meta"))
    }


def mutmut(jobs: int, names: list[str]) -> None:
    """``mutmut run`` on exactly these mutants (named ones are re-run), its output appended to mutants/run.log.

    Through tools/mutmut_set.py, so ``MUTATION_SET`` picks the modules and tests (plain mutmut without it).
    """
    command = [sys.executable, str(pathlib.Path(__file__).resolve().parent / "mutmut_set.py"), "run"]
    with open(MUTANTS / "run.log", "a") as log:
        if subprocess.run([*command, "--max-children", str(jobs), *names], stdout=log, stderr=log).returncode:
            sys.exit(f"mutmut failed (log: {MUTANTS / 'run.log'})")


def exit_codes() -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in MUTANTS.rglob("*.py.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def draw(
    names_by_module: dict[str, list[str]], tested_functions: set[str], sizes: dict[str, int], default: int, seed: int
) -> dict[str, list[str]]:
    """Per module, ``sizes.get(module, default)`` mutants drawn with a generator seeded by (seed, module)."""
    sample = {}
    for module, names in names_by_module.items():
        tested = [n for n in names if n.rsplit("__mutmut_", 1)[0] in tested_functions]
        size = min(sizes.get(module, default), len(tested))
        sample[module] = sorted(random.Random(f"{seed}:{module}").sample(tested, size))
    return sample


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, required=True, help="mutants per module")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="PATH=N",
        help="another sample size for one module, e.g. dcl/model/heads.py=10",
    )
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="print the sampled names, run nothing")
    args = parser.parse_args()
    sizes = {path: int(n) for path, n in (m.split("=", 1) for m in args.module)}

    if not STATS.exists():
        # First run: mutmut generates all mutants and records which tests cover which function while
        # running one cheap mutant; the sample is drawn from what that pass wrote.
        mutmut(args.jobs, [coverage_mutant(os.environ.get("MUTATION_SET") or None)])
    tested = {name for name, tests in json.loads(STATS.read_text())["tests_by_mangled_function_name"].items() if tests}
    sample = draw(mutants_by_module(), tested, sizes, args.sample, args.seed)
    names = [n for module in sample.values() for n in module]
    if args.list:
        print("\n".join(names))
        return 0
    mutmut(args.jobs, names)

    codes = exit_codes()
    print(f"seed {args.seed}" + (f", set {os.environ['MUTATION_SET']}" if os.environ.get("MUTATION_SET") else ""))
    print(f"{'module':30} {'sampled':>7} {'killed':>7} {'survived':>8} {'timeout':>7}  kill rate")
    total = collections.Counter()
    for module, drawn in sample.items():
        c = collections.Counter(status_by_exit_code[codes[n]] for n in drawn)
        total.update(c)
        print(
            f"{module:30} {len(drawn):7} {c['killed']:7} {c['survived']:8} {c['timeout']:7}  "
            f"{c['killed'] / max(len(drawn), 1):.1%}"
        )
    n = sum(total.values())
    print(
        f"{'all':30} {n:7} {total['killed']:7} {total['survived']:8} {total['timeout']:7}  "
        f"{total['killed'] / max(n, 1):.1%}"
    )
    for name in names:
        if status_by_exit_code[codes[name]] != "killed":
            print(
                "survived:"
                if status_by_exit_code[codes[name]] == "survived"
                else f"{status_by_exit_code[codes[name]]}:",
                name,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
