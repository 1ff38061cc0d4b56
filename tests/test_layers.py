"""The package layout is the architecture (dcl/__init__.py, docs/design.md): imports go only to a
lower layer, and the login-node and report side never loads torch or detectron2."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dcl"
# Lowest first. A module may import its own unit and units of a lower layer, never a sibling or
# a higher one. Top-level modules not named here are shared (layer 0).
LAYERS = {"model": 1, "data": 1, "evaluation": 2, "training": 3, "workflow": 3, "report": 3, "cli": 4, "__main__": 5}
# What the Snakefile, `dcl plan`/`status`/`evaluate`/`errors`/`report` import: none may load torch
# or detectron2 (a login node has neither to spare, and `dcl --help` stays instant).
TORCH_FREE = ["dcl.evaluation", "dcl.workflow", "dcl.report"]
TORCH_FREE_MODULES = [
    "dcl.io",
    "dcl.names",
    "dcl.layout",
    "dcl.runrecord",
    "dcl.slurm",
    "dcl.progress",
    "dcl.argtypes",
    "dcl.tracking",
    "dcl.cli",
    "dcl.model.contrast_config",
    "dcl.data.coco",
    "dcl.data.cityscapes",
    "dcl.data.weights",
]


def _unit(module: str) -> str:
    """``dcl.training.engine`` -> ``training``; a shared top-level module -> ``shared``."""
    part = module.split(".")[1] if "." in module else ""
    return part if part in LAYERS else "shared"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``dcl.*`` module a file imports, at any depth (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "dcl" or name.startswith("dcl.")}


def _existing(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_imports_go_only_to_a_lower_layer():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for target in sorted(filter(_existing, _imports(path))):
            if target == "dcl":  # `from dcl import __version__`
                continue
            a, b = _unit(source), _unit(target)
            if a != b and LAYERS.get(b, 0) >= LAYERS.get(a, 0):
                wrong.append(f"{source} ({a}) imports {target} ({b})")
    assert not wrong, "imports against the layers of dcl/__init__.py:\n" + "\n".join(wrong)


def test_every_package_says_its_job_and_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in doc.lower(), f"{init}: the docstring should say what the package may import"


@pytest.mark.parametrize("package", TORCH_FREE)
def test_the_login_node_side_never_loads_torch_or_detectron2(package):
    modules = [_module_name(p) for p in sorted((PACKAGE / package.split(".")[1]).rglob("*.py"))]
    modules += TORCH_FREE_MODULES
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = [m for m in ('torch', 'detectron2') if m in sys.modules]\n"
        "    if heavy: sys.exit(f'{name} loads {heavy}')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _report_edges(path: Path) -> set[str]:
    """The modules of ``dcl.report`` that a file of it imports, at any depth (late imports count).
    ``from dcl.report import x`` is an edge to the submodule ``x`` when there is one, else to the
    package's ``__init__`` (``dcl.report``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if _existing(submodule) else node.module)
    return {name for name in found if name == "dcl.report" or name.startswith("dcl.report.")}


def test_the_report_package_has_no_import_cycle():
    """Not even one hidden by a late import: the modules of dcl/report import each other one way,
    and none imports the package's ``__init__`` back (the output names are in dcl.report.outputs)."""
    graph = {_module_name(p): _report_edges(p) for p in sorted((PACKAGE / "report").glob("*.py"))}
    back = sorted(module for module, edges in graph.items() if module != "dcl.report" and "dcl.report" in edges)
    assert not back, f"modules importing dcl.report's __init__ back: {back}"

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        for target in sorted(graph.get(module, ())):
            found = cycle_from(target, path + [module])
            if found:
                return found
        return None

    cycles = [" -> ".join(c) for c in map(lambda m: cycle_from(m, []), sorted(graph)) if c]
    assert not cycles, "import cycles in dcl/report:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", ["labels", "table", "tables", "figures", "summary", "document"])
def test_the_report_computes_statistics_only_in_its_analysis(module):
    """Builders, figures and the summary format what dcl.report.analysis computed: no statistics
    library and no statistic of analysis is called from them."""
    tree = ast.parse((PACKAGE / "report" / f"{module}.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            if node.module == "dcl.report.analysis":
                imported.update(alias.name for alias in node.names)
    assert not imported & {"scipy", "pandas", "statistics", "paired_difference", "summarize"}, module
