"""Methods of one's own (``docs/own-method.md``): the user's modules ``dcl train --import`` loads
before the model is built, and the check ``dcl plan --check-methods`` (and the workflow, before any
job) runs of every experiment of such a method.

A module is a dotted name (an installed package's module) or a ``.py`` file. Importing it runs its
detectron2 registrations (``@ROI_MASK_HEAD_REGISTRY.register()`` ...); a module that defines
``add_config(cfg)`` (detectron2's ``add_*_config`` convention) gets to add its config keys to the
defaults before a config file and overrides are merged (:func:`dcl.training.config.load_config`).

Imports torch and detectron2 (through :mod:`dcl.training.config`): never from the Snakefile itself, which
runs ``python -m dcl.training.methods`` as a subprocess.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import dcl.compat  # noqa: F401  (before any detectron2 module)
from dcl.training.config import add_config_hook, load_config
from dcl.io import InputError
from dcl.layout import is_import_path

__all__ = ["REGISTRY_KEYS", "check_experiments", "check_registered", "import_modules", "main"]

# Config keys that name a detectron2 registration, and the registry each is looked up in.
REGISTRY_KEYS: dict[str, tuple[str, str]] = {
    "MODEL.META_ARCHITECTURE": ("detectron2.modeling", "META_ARCH_REGISTRY"),
    "MODEL.BACKBONE.NAME": ("detectron2.modeling", "BACKBONE_REGISTRY"),
    "MODEL.PROPOSAL_GENERATOR.NAME": ("detectron2.modeling", "PROPOSAL_GENERATOR_REGISTRY"),
    "MODEL.RPN.HEAD_NAME": ("detectron2.modeling", "RPN_HEAD_REGISTRY"),
    "MODEL.ROI_HEADS.NAME": ("detectron2.modeling", "ROI_HEADS_REGISTRY"),
    "MODEL.ROI_BOX_HEAD.NAME": ("detectron2.modeling.roi_heads.box_head", "ROI_BOX_HEAD_REGISTRY"),
    "MODEL.ROI_MASK_HEAD.NAME": ("detectron2.modeling.roi_heads.mask_head", "ROI_MASK_HEAD_REGISTRY"),
}


def _import_one(spec: str) -> ModuleType:
    if not is_import_path(spec):
        return importlib.import_module(spec)
    path = Path(spec).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {spec}")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded  # imported once per process: registering a name twice is an error
        raise ImportError(f"a module named {name!r} is already imported from {loaded.__file__}; rename {spec}")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # as `import` does, so pickling and dataclasses in it work
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_modules(specs: Iterable[str]) -> list[ModuleType]:
    """Import each module (a dotted name or a ``.py`` file) once per process; register its
    ``add_config`` with :func:`dcl.training.config.load_config`.

    Raises:
        InputError: one line naming the module that does not import and why.
    """
    modules = []
    for spec in specs:
        try:
            module = _import_one(spec)
        except Exception as error:  # whatever the user's module raises, SyntaxError included
            raise InputError(f"--import {spec}: does not import: {type(error).__name__}: {error}") from None
        hook = getattr(module, "add_config", None)
        if callable(hook):
            add_config_hook(hook)
        modules.append(module)
    return modules


def check_registered(cfg: Any) -> list[str]:
    """The registry names ``cfg`` asks for that nobody registered, one line each."""
    problems = []
    for key, (module_name, registry_name) in REGISTRY_KEYS.items():
        node = cfg
        for part in key.split("."):
            node = getattr(node, part, None)
        if not isinstance(node, str):
            continue
        registry = getattr(importlib.import_module(module_name), registry_name)
        if node not in registry:
            known = ", ".join(sorted(name for name, _ in registry))
            problems.append(
                f"{key} {node!r} is not registered in detectron2's {registry_name} "
                f"(is the module that registers it imported: the method's `imports`, dcl train --import? registered: {known})"
            )
    return problems


def check_experiments(checks: Iterable[dict[str, Any]]) -> list[str]:
    """Each experiment of a method of one's own (:meth:`dcl.workflow.experiments.Plan.method_checks`):
    its imports load, its config with every override loads, the registry names exist. One line
    per problem, naming the experiment's place in the config, its method and the name at fault."""
    problems = []
    for check in checks:
        where = f"{check['where']}: method {check['method']}"
        try:
            import_modules(check["imports"])
        except InputError as error:
            problems.append(f"{where}: {error}")
            continue
        try:
            cfg = load_config(check["config_file"], list(check["overrides"]))
        except InputError as error:
            problems.append(f"{where}: {error}")
            continue
        problems += [f"{where}: {line}" for line in check_registered(cfg)]
    return problems


def main(argv: list[str] | None = None) -> int:
    """``python -m dcl.training.methods FILE`` (``-``: stdin): the checks as JSON, problems on stderr."""
    parser = argparse.ArgumentParser(prog="python -m dcl.training.methods", description=main.__doc__)
    parser.add_argument("checks", help="JSON list written by Plan.method_checks(); - reads stdin")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.checks == "-" else Path(args.checks).read_text(encoding="utf-8")
    problems = check_experiments(json.loads(text))
    for line in dict.fromkeys(problems):
        print(f"  - {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
