"""One owner per layout fact: path patterns live in dcl.layout, names in dcl.names, and the others
(code and Snakemake rules) import them, so a changed pattern cannot leave a stale copy behind."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from dcl import layout, names

REPO = Path(__file__).resolve().parents[1]
# Fragments of the patterns dcl.layout owns. Prose (docstrings, comments) may mention them.
OWNED_BY_LAYOUT = (
    "instancesonly_filtered_gtFine",
    "annotations/instances_",
    "coco/instances_occ",
    "coco_instances_results.json",
    "seed{",
)


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module's code: every one but the docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def _rule_code_lines(path: Path) -> list[tuple[int, str]]:
    """A Snakemake file's lines without comments and one-line docstrings."""
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0].strip()
        if code and not re.fullmatch(r'""".*"""', code):
            lines.append((number, code))
    return lines


def test_path_patterns_are_spelt_only_in_dcl_layout():
    found = []
    for path in sorted((REPO / "dcl").rglob("*.py")):
        if path.name != "layout.py":
            found += [(path, n, s) for n, s in _code_strings(path) if any(f in s for f in OWNED_BY_LAYOUT)]
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        found += [(path, n, s) for n, s in _rule_code_lines(path) if any(f in s for f in OWNED_BY_LAYOUT)]
    assert not found, "\n".join(f"{p.relative_to(REPO)}:{n}: {s!r}" for p, n, s in found)


def test_the_check_finds_a_copy(tmp_path):
    """The test above can fail: a pattern in code is found, the same words in a docstring are not."""
    module = tmp_path / "m.py"
    module.write_text('def f():\n    """instances_val.json"""\n    return "instances_val.json"\n')
    assert _code_strings(module) == [(3, "instances_val.json")]


def test_layout_knows_every_dataset_of_the_vocabulary():
    assert list(layout.DATASET_SPECS) == list(names.DATASETS)
    assert all(name == spec.name for name, spec in layout.DATASET_SPECS.items())


def test_every_detectron2_config_names_registered_datasets():
    """DATASETS.TRAIN / TEST of the configs are names dcl.data.datasets registers (or none)."""
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key in ("TRAIN", "TEST"):
            value = (config.get("DATASETS") or {}).get(key)
            if value is not None:
                assert set(ast.literal_eval(value) if isinstance(value, str) else value) <= set(
                    layout.REGISTERED_NAMES
                ), (path.name, key, value)


def test_dataset_paths():
    """The documented layout (docs/design.md, "Dataset names and layout")."""
    coco, cityscapes = layout.DATASET_SPECS["coco"], layout.DATASET_SPECS["toy_cityscapes"]
    assert coco.gt == "coco/annotations/instances_val2017.json" and coco.images("train") == "train2017"
    assert coco.legacy_gt is None and coco.catalog_name("val") == "coco_2017_val"
    assert cityscapes.gt == "toy/cityscapes/annotations/instancesonly_filtered_gtFine_val.json"
    assert cityscapes.legacy_gt == "toy/cityscapes/annotations/instancesonly_filtered_gtFine_val.detectron.json"
    assert cityscapes.cityscapes_root == "toy/cityscapes" and cityscapes.images("val") == "leftImg8bit/val"
    assert layout.REGISTERED_NAMES == (
        "cityscapes_fine_instance_seg_train",
        "cityscapes_fine_instance_seg_val",
        "coco_2017_train",
        "coco_2017_val",
        "toy_cityscapes_train",
        "toy_cityscapes_val",
        "toy_coco_train",
        "toy_coco_val",
    )
    assert layout.run_files("released", occlusion=True) == [
        "run.json",
        "eval.json",
        "errors.json",
        "errors_legacy.json",
        "eval_occ.json",
        "errors_occ.json",
        "errors_legacy_occ.json",
    ]
