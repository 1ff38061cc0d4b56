"""``mutmut`` with a named module set of pyproject.toml (issue 22), e.g. ``MUTATION_SET=issue22``.

mutmut 3.8.1 reads its configuration from ``[tool.mutmut]`` only. With ``MUTATION_SET=NAME`` the keys
of ``[tool.dcl-mutation.NAME]`` replace those of ``[tool.mutmut]`` (``only_mutate`` and the test
selection, typically); without it this is plain ``mutmut``, so the issue-16 pass is unchanged.
mutmut runs each mutant in a forked child of this process, so the replaced configuration holds there.

    MUTATION_SET=issue22 python tools/mutmut_set.py run|results|show NAME ...
"""

from __future__ import annotations

import os
import pathlib
import sys
import tomllib

import mutmut.configuration

ROOT = pathlib.Path(__file__).resolve().parent.parent


def settings(name: str | None) -> dict:
    """``[tool.mutmut]`` with ``[tool.dcl-mutation.<name>]`` laid over it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]
    merged = dict(tool["mutmut"])
    if name:
        sets = tool.get("dcl-mutation", {})
        if name not in sets:
            sys.exit(f"no [tool.dcl-mutation.{name}] in pyproject.toml (sets: {', '.join(sets) or 'none'})")
        merged.update({k: v for k, v in sets[name].items() if k != "coverage_mutant"})
    return merged


def coverage_mutant(name: str | None) -> str:
    """A cheap mutant whose run makes mutmut generate all mutants and record test coverage."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]
    return tool.get("dcl-mutation", {}).get(name, {}).get("coverage_mutant", "dcl.model.loss.x_gather_points__mutmut_1")


def main() -> None:
    conf = settings(os.environ.get("MUTATION_SET") or None)
    mutmut.configuration._config_reader = lambda: lambda key, default: conf.get(key, default)
    mutmut.configuration.reset_config()
    from mutmut.__main__ import cli

    sys.argv[0] = "mutmut"
    cli()


if __name__ == "__main__":
    main()
