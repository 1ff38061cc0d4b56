"""The workflow config: loading, schema validation, expansion into runs, ``dcl train`` command lines.

A workflow config (``configs/paper.yaml``, ``configs/toy.yaml``; documented in
``configs/README.md``) declares an *experiment matrix*: trained experiments (each for every seed),
one-parameter ablation sweeps around a DCL experiment, and released checkpoints that skip training.
:class:`Plan` turns a validated config into runs (one experiment x seed each) and everything the
Snakemake workflow needs to know about a run: its folders, its ``dcl train`` command line, its
resources. ``dcl plan CONFIG -o experiments.json`` (:mod:`dcl.workflow.plan`) writes the list of runs the report expects
(format in ``docs/design.md``).

The same code serves both callers, so the Snakefile and ``dcl plan`` can never disagree about what
a config means. No torch and no detectron2 here: the Snakefile imports this on a login node.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from dcl.workflow import cost
from dcl import layout
from dcl.model.contrast_config import DCL_DEFAULTS, DCL_KEY_PREFIX
from dcl.io import (
    MAX_YAML_VALUES,
    SEED_LIMIT,
    InputError,
    check_bounded,
    load_yaml,
    read_yaml,
)
from dcl.layout import DATASET_SPECS, is_import_path
from dcl.runs import Ablation, ExpectedRun
from dcl.names import DEFAULT_BACKBONE

__all__ = [
    "REPO_ROOT",
    "SCHEMA_PATH",
    "DCL_HEAD_OVERRIDES",
    "MODEL_HEADS",
    "RESERVED_OVERRIDES",
    "METHOD_OVERRIDES",
    "Resources",
    "Run",
    "Plan",
    "read_config_file",
    "parse_config_assignment",
    "merge_config",
    "load_workflow_config",
    "validate_config",
    "format_override_value",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_MAX_CHUNKS = 50  # the schema's default for max_chunks
DEFAULT_KEEP_CHECKPOINTS = 2  # the schema's default for keep_checkpoints

# What `method: dcl` switches on (the original README's command lines).
DCL_HEAD_OVERRIDES: tuple[tuple[str, str], ...] = (
    ("MODEL.ROI_HEADS.NAME", "ContrastRoIHeads"),
    ("MODEL.ROI_MASK_HEAD.NAME", "ContrastConvUpsampleHead"),
)
# The heads each `model` and `method` train with (detectron2 registry names). A Mask R-CNN
# baseline keeps its config's heads, so its command lines are the original README's.
MODEL_HEADS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "mask_rcnn": {"baseline": (), "dcl": DCL_HEAD_OVERRIDES},
    "refinemask": {
        "baseline": (("MODEL.ROI_HEADS.NAME", "RefineMaskROIHeads"), ("MODEL.ROI_MASK_HEAD.NAME", "RefineMaskHead")),
        "dcl": (("MODEL.ROI_HEADS.NAME", "RefineMaskROIHeads"), ("MODEL.ROI_MASK_HEAD.NAME", "RefineMaskContrastHead")),
    },
}
# Keys the workflow sets itself; an experiment's `overrides` may not, or two places would decide.
RESERVED_OVERRIDES: dict[str, str] = {
    "SEED": "seeds come from `seeds`",
    "OUTPUT_DIR": f"the workflow puts every run in {{work_dir}}/{{preset}}/{layout.OUTPUT_DIR}",
    "MODEL.WEIGHTS": "use the experiment's `weights` (a name from the `weights` table or a path)",
    "MODEL.ROI_HEADS.NAME": "use `method` (and `model`); a method of your own sets it in its `methods` entry",
    "MODEL.ROI_MASK_HEAD.NAME": "use `method` (and `model`); a method of your own sets it in its `methods` entry",
}
# Of the reserved keys, those a method of one's own (the `methods` table) may set: its heads.
METHOD_OVERRIDES = ("MODEL.ROI_HEADS.NAME", "MODEL.ROI_MASK_HEAD.NAME")
# How an import of the `methods` table is written: a dotted module name, or a .py file.
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class Resources:
    """What one run asks for: GPUs (also ``--num-gpus``), CPU cores, memory (MB), minutes."""

    gpus: int
    cpus: int
    mem_mb: int
    runtime: int


@dataclass(frozen=True)
class Run:
    """One run (experiment x seed) as the report lists it, with what it takes to produce it.

    ``folder`` names the experiment whose run folder holds the results: the run's own name, except
    for an ablation point whose value is its base experiment's (that model is trained once).
    """

    experiment: str
    seed: int
    kind: str  # train | released
    dataset: str
    init: str
    method: str
    group: str  # main | ablation | released
    ablation: Ablation | None
    folder: str
    config_file: str
    overrides: tuple[tuple[str, str], ...] = field(repr=False)
    weights_file: str | None
    resources: Resources
    model: str = "mask_rcnn"  # mask_rcnn | refinemask
    # With `model`, which published model this is (the config's optional `backbone`, `schedule`).
    backbone: str = DEFAULT_BACKBONE
    schedule: str | None = None
    # A method of the `methods` table: its label, the experiment it is compared against, whether
    # it is DCL on top of the method, and the modules `dcl train --import` loads (as the command
    # line names them). Built-in methods: None / False / ().
    method_label: str | None = None
    baseline: str | None = None
    dcl_on_top: bool = False
    imports: tuple[str, ...] = ()

    @property
    def run_dir(self) -> str:
        """The run's folder relative to ``results/{preset}``."""
        return layout.RUN_DIR.format(experiment=self.folder, seed=self.seed)

    @property
    def metric(self) -> str:
        return DATASET_SPECS[self.dataset].metric

    def record(self) -> dict[str, Any]:
        """The run's entry in ``experiments.json``: :class:`dcl.runs.ExpectedRun` owns the format."""
        return ExpectedRun(
            experiment=self.experiment,
            seed=self.seed,
            kind=self.kind,
            dataset=self.dataset,
            init=self.init,
            method=self.method,
            group=self.group,
            ablation=self.ablation,
            metric=self.metric,
            run_dir=self.run_dir,
            model=self.model,
            backbone=self.backbone,
            schedule=self.schedule,
            method_label=self.method_label,
            baseline=self.baseline,
            dcl_on_top=self.dcl_on_top,
        ).to_record()


# ----------------------------------------------------------------------------- reading configs
def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a YAML (or JSON) workflow config file; ``InputError`` says which file and where."""
    data = read_yaml(path, "workflow config")
    if not isinstance(data, dict):
        raise InputError(f"workflow config {path}: expected a mapping of keys to values, got {type(data).__name__}")
    return data


def refuse_templated_config(path: str | os.PathLike) -> None:
    """Refuse a workflow config that asks Snakemake to render it as a YTE template
    (``__use_yte__: true``): Snakemake would run the Python in it while loading it. To call
    before Snakemake loads the file (a ``--configfile`` it loads before the Snakefile runs)."""
    data = read_yaml(path, "workflow config")
    if isinstance(data, dict) and data.get("__use_yte__"):
        raise InputError(
            f"workflow config {path} asks for YTE templating (__use_yte__), which runs Python code "
            "in it: refused; write plain YAML"
        )


def parse_config_assignment(text: str) -> dict[str, Any]:
    """``KEY=VALUE`` exactly as Snakemake's ``--config`` reads it: an int, a float, ``True`` /
    ``False``, else YAML read with the BaseLoader (nested scalars stay strings), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[a-zA-Z_][\w-]*\w", key):
        raise InputError(f"--config {text!r}: expected KEY=VALUE with KEY a config key")
    if value == "":
        return {key: None}
    for parse in (int, float):
        try:
            return {key: parse(value)}
        except ValueError:
            pass
    if value in ("True", "False"):
        return {key: value == "True"}
    try:
        return {key: load_yaml(value, yaml.BaseLoader)}
    except yaml.YAMLError:
        return {key: value}
    except ValueError as error:
        raise InputError(f"--config {key}: refused: {error}") from None


def merge_config(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place the way Snakemake layers config files and
    ``--config``: mappings merge key by key, anything else (lists included) is replaced."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_config(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def load_workflow_config(paths: Iterable[str | os.PathLike], assignments: Iterable[str] = ()) -> dict[str, Any]:
    """Config files layered in order, then ``KEY=VALUE`` assignments (as ``snakemake
    --configfile A B --config K=V``); not validated yet."""
    config: dict[str, Any] = {}
    for path in paths:
        merge_config(config, read_config_file(path))
    for assignment in assignments:
        merge_config(config, parse_config_assignment(assignment))
    return config


# ----------------------------------------------------------------------------- validation
_SCHEMA_CACHE: dict[str, Any] = {}


def _schema() -> dict[str, Any]:
    if "schema" not in _SCHEMA_CACHE:
        try:
            _SCHEMA_CACHE["schema"] = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(
                f"the workflow config schema is missing: {SCHEMA_PATH} "
                "(dcl plan needs the repository checkout, not just the installed package)"
            ) from None
    return _SCHEMA_CACHE["schema"]


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        return target
    return {}


def _known_keys(node: dict[str, Any], root: dict[str, Any]) -> list[str]:
    """The property names a (sub)schema declares, through ``$ref`` and ``allOf``."""
    keys = list(node.get("properties", {}))
    target = _resolve(node, root)
    if target:
        keys += _known_keys(target, root)
    for part in node.get("allOf", []):
        keys += _known_keys(part, root)
    return list(dict.fromkeys(keys))


def _location(path: Iterable[Any], config: Any) -> str:
    """``experiments[2] (cityscapes_coco_dcl).seeds[0]`` for a JSON path into the config."""
    text, node = "", config
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                text += f" ({node['name']})"
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text or "top level"


def _describe(error: Any, config: Any, root: dict[str, Any]) -> str:
    where = _location(error.absolute_path, config)
    if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(error.instance, dict):
        known = _known_keys(error.schema, root)
        unknown = [key for key in error.instance if key not in known]
        if known and unknown:
            parts = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), known, n=1)
                parts.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            return f"{where}: {'; '.join(parts)}; allowed keys: {', '.join(known)}"
    if "propertyNames" in error.relative_schema_path:
        return f"{where}: key {error.instance!r} is not allowed ({error.message})"
    return f"{where}: {error.message}"


def validate_config(config: dict[str, Any], source: str = "workflow config") -> dict[str, Any]:
    """Check ``config`` against ``workflow/schemas/config.schema.yaml``.

    Returns:
        ``config`` itself, unchanged.

    Raises:
        InputError: every violation, one per line, each with its location in the config
            (``experiments[2] (cityscapes_coco_dcl).seeds[0]: 'a' is not of type 'integer'``)
            and, for a misspelt key, the closest allowed one.
    """
    from jsonschema import Draft202012Validator

    try:  # a config Snakemake loaded itself has not been bounded yet (YAML aliases)
        check_bounded(config, MAX_YAML_VALUES)
    except ValueError as error:
        raise InputError(f"invalid {source}: {error}") from None
    schema = _schema()
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = list(dict.fromkeys(_describe(error, config, schema) for error in errors))
        raise InputError(f"invalid {source}:\n" + "\n".join(f"  - {line}" for line in lines))
    return config


# ----------------------------------------------------------------------------- overrides
def format_override_value(value: Any) -> str:
    """A config value as detectron2's ``merge_from_list`` reads it back (``literal_eval``)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(repr(v) if isinstance(v, str) else format_override_value(v) for v in value) + "]"
    return str(value)


def _slug(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _same_value(a: Any, b: Any) -> bool:
    """Equal as config values: ``True`` is not the number 1."""
    return (type(a) is bool) == (type(b) is bool) and a == b


# ----------------------------------------------------------------------------- the plan
class Plan:
    """A validated workflow config expanded into runs.

    Args:
        config: the workflow config (already merged from files and ``--config``).
        source: how to name the config in error messages (its file name).
        repo_root: where relative detectron2 config paths are found (the repository).
        working_dir: the directory paths in command lines are relative to (Snakemake's working
            directory; outputs, datasets and weights paths in the config are relative to it).

    Raises:
        InputError: the config breaks the schema or a rule the schema cannot express (unique
            names, ablation bases, reserved overrides, missing detectron2 config files).
    """

    def __init__(
        self,
        config: dict[str, Any],
        source: str = "workflow config",
        *,
        repo_root: str | os.PathLike = REPO_ROOT,
        working_dir: str | os.PathLike | None = None,
    ) -> None:
        validate_config(config, source)
        self.config = config
        self.source = source
        self.repo_root = Path(repo_root).resolve()
        self.working_dir = Path(working_dir if working_dir is not None else os.getcwd()).resolve()
        self._problems: list[str] = []
        self.preset: str = config["preset"]
        self.datasets_root: str = config["datasets_root"].rstrip("/") or "/"
        self.weights_dir: str = config["weights_dir"].rstrip("/") or "/"
        self.results: str = f"{config['results_dir'].rstrip('/')}/{self.preset}"
        self.work: str = f"{config['work_dir'].rstrip('/')}/{self.preset}"
        self.logs: str = layout.LOGS.format(preset=self.preset)
        self.occlusion_subset: str | None = config.get(
            "occlusion_subset", f"{self.datasets_root}/{layout.COCO_OCCLUSION_SUBSET}"
        )
        self.published: str | None = (
            None
            if config["published"] is None
            else self._repository_file(config["published"], "published", "published numbers file")
        )
        # Sorted: the same overrides must give the same command (a Snakemake rerun trigger)
        # whichever config file or --config put each key there first. Keys are distinct, so
        # their order does not change the merged detectron2 config.
        self.global_overrides = tuple(
            (k, format_override_value(v)) for k, v in sorted(config["train_overrides"].items())
        )
        self.max_chunks: int = int(config.get("max_chunks", DEFAULT_MAX_CHUNKS))
        self.keep_checkpoints: int = int(config.get("keep_checkpoints", DEFAULT_KEEP_CHECKPOINTS))
        self.tracking: dict[str, Any] | None = self._tracking(config.get("tracking"))
        self._missing_configs: dict[str, list[str]] = {}
        self.runs: list[Run] = []
        self.methods: dict[str, dict[str, Any]] = config.get("methods") or {}
        self._method_imports = {name: self._imports(name, method) for name, method in self.methods.items()}
        self._where: dict[str, str] = {}  # experiment -> its place in the config, for messages
        self._expand()
        for value, users in self._missing_configs.items():
            users = list(dict.fromkeys(users))
            self._problems.append(
                f"detectron2 config file {value} does not exist"
                + ("" if Path(value).is_absolute() else f" (relative to the repository, {self.repo_root})")
                + f"; used by {', '.join(users[:3])}"
                + (f" and {len(users) - 3} more" if len(users) > 3 else "")
            )
        if self._problems:
            problems = dict.fromkeys(self._problems)
            raise InputError(f"invalid {source}:\n" + "\n".join(f"  - {p}" for p in problems))
        self.jobs: dict[tuple[str, int], Run] = {}
        for run_ in self.runs:
            if run_.folder == run_.experiment:
                self.jobs[(run_.experiment, run_.seed)] = run_

    # -- expansion --------------------------------------------------------------------------
    def _tracking(self, section: dict[str, Any] | None) -> dict[str, Any] | None:
        """The ``tracking`` section with its defaults; None when tracking is off."""
        section = section or {}
        backend = section.get("backend")
        if backend in (None, "none"):
            return None
        if backend == "wandb" and section.get("uri"):
            self._problems.append("tracking.uri: is MLflow's; a W&B server is set by WANDB_BASE_URL")
        if backend == "mlflow" and section.get("mode"):
            self._problems.append(
                "tracking.mode: is W&B's; MLflow without network logs to tracking.uri (a local store)"
            )
        return {
            "backend": backend,
            "project": section.get("project") or f"dcl-{self.preset}",
            "uri": (section.get("uri") or f"sqlite:///{self.work}/mlflow.db") if backend == "mlflow" else None,
            "mode": (section.get("mode") or "offline") if backend == "wandb" else None,
        }

    def tracking_arguments(self, run_: Run) -> list[str]:
        """``dcl train``'s tracking options for a run (:mod:`dcl.tracking`): the backend, project,
        store or mode, the run's name and its tags; [] when tracking is off (the command is then
        what it was before tracking existed)."""
        if self.tracking is None:
            return []
        words = self._tracker_words() + ["--tracking-name", f"{run_.experiment}/seed{run_.seed}"]
        tags = {
            "preset": self.preset,
            "experiment": run_.experiment,
            "method": run_.method,
            "model": run_.model,
            "dataset": run_.dataset,
            "init": run_.init,
            "group": run_.group,
        }
        if run_.ablation is not None:  # the swept parameter and its value (and the base experiment)
            tags |= {
                f"ablation_{key}": format_override_value(getattr(run_.ablation, key))
                for key in ("parameter", "value", "base")
            }
        for key, value in tags.items():
            words += ["--tracking-tag", f"{key}={value}"]
        return words

    def _tracker_words(self) -> list[str]:
        assert self.tracking is not None
        words = ["--tracking", self.tracking["backend"], "--tracking-project", self.tracking["project"]]
        if self.tracking["uri"]:
            words += ["--tracking-uri", self.tracking["uri"]]
        if self.tracking["mode"] == "offline":
            words += ["--tracking-offline"]
        return words

    def report_tracking_arguments(self) -> list[str]:
        """``dcl report``'s tracking options: its tables and figures go to a run named
        ``report`` in the same project (W&B run files in ``{work_dir}/{preset}/wandb``); []
        when tracking is off."""
        if self.tracking is None:
            return []
        words = [*self._tracker_words(), "--tracking-tag", f"preset={self.preset}"]
        return words + (["--tracking-dir", self.work] if self.tracking["backend"] == "wandb" else [])

    def _repository_path(self, value: str) -> tuple[str, bool]:
        """A file of the repository named in the config (relative to the repository unless
        absolute): how command lines name it (as typed when the working directory is the
        repository, else absolute) and whether it exists."""
        path = Path(value)
        absolute = path if path.is_absolute() else self.repo_root / path
        typed = not path.is_absolute() and (self.working_dir / path).resolve() == absolute.resolve()
        return (value if typed else str(absolute)), absolute.is_file()

    def _config_path(self, value: str, where: str) -> str:
        name, exists = self._repository_path(value)
        if not exists:
            self._missing_configs.setdefault(value, []).append(where)
        return name

    def _repository_file(self, value: str, where: str, what: str) -> str:
        name, exists = self._repository_path(value)
        if not exists:
            self._problems.append(
                f"{where}: {what} {value} does not exist"
                + ("" if Path(value).is_absolute() else f" (relative to the repository, {self.repo_root})")
            )
        return name

    def _weights(self, value: str | None, where: str) -> str | None:
        if value is None:
            return None
        table = self.config["weights"]
        if value in table:
            return self._download_path(table[value]["url"], f"weights.{value}")
        if "://" in value:
            self._problems.append(
                f"{where}: weights {value!r} is a URL; declare it in the top-level "
                "`weights` table (name: {url: ...}) and refer to it by name, so it is "
                "downloaded before any compute job starts"
            )
        return value

    def _download_path(self, url: str, where: str) -> str | None:
        from dcl.data.weights import local_path

        try:
            return str(local_path(url, self.weights_dir))
        except InputError as error:
            self._problems.append(f"{where}: {error}")
            return None

    def _imports(self, name: str, method: dict[str, Any]) -> tuple[str, ...]:
        """A method's ``imports`` as ``dcl train --import`` gets them: files of the repository
        (which must exist) as command lines name them, module names as they are."""
        where = f"methods.{name}"
        words = []
        for value in method.get("imports", []):
            if is_import_path(value):
                words.append(self._repository_file(value, where, "import"))
            else:
                if not _MODULE_NAME.match(value):
                    self._problems.append(
                        f"{where}: import {value!r} is neither a module name (package.module) nor a .py file"
                    )
                words.append(value)
        return tuple(words)

    def _overrides(self, entry: dict[str, Any], where: str, allowed: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        pairs = []
        for key, value in entry.get("overrides", {}).items():
            if key in RESERVED_OVERRIDES and key not in allowed:
                self._problems.append(f"{where}: override {key} is set by the workflow: {RESERVED_OVERRIDES[key]}")
            elif key.startswith(DCL_KEY_PREFIX):
                self._problems.append(
                    f"{where}: override {key}: put it in the experiment's `dcl` mapping as {key[len(DCL_KEY_PREFIX) :]}"
                )
            pairs.append((key, format_override_value(value)))
        return pairs

    def _resources(self, entry: dict[str, Any]) -> Resources:
        merged = {**self.config["defaults"]["resources"], **entry.get("resources", {})}
        return Resources(**merged)

    def _model_runs(
        self,
        entry: dict[str, Any],
        where: str,
        *,
        kind: str,
        group: str,
        seeds: list[int],
        ablation: Ablation | None = None,
        folder: str | None = None,
    ) -> list[Run]:
        method = self.methods.get(entry["method"]) if entry["method"] not in MODEL_HEADS["mask_rcnn"] else None
        with_dcl = entry["method"] == "dcl" or bool(method and method.get("dcl"))
        self._check_method(entry, where, kind, method, with_dcl)
        model = entry.get("model", "mask_rcnn")
        backbone = entry.get("backbone", DEFAULT_BACKBONE)
        overrides = self._model_overrides(entry, where, method, with_dcl, model, backbone)
        config_file = self._config_path(entry["config"], where)
        weights = self._weights(entry.get("weights"), where)
        resources = self._resources(entry)
        for seed in seeds:
            if seed + max(1, resources.gpus) > SEED_LIMIT:  # detectron2 seeds rank r with seed + r
                self._problems.append(
                    f"{where}: seed {seed} + one per GPU ({resources.gpus}) exceeds numpy's seed range (below 2^32)"
                )
        return [
            Run(
                experiment=entry["name"],
                seed=seed,
                kind=kind,
                dataset=entry["dataset"],
                init=entry["init"],
                method=entry["method"],
                group=group,
                ablation=ablation,
                folder=folder or entry["name"],
                config_file=config_file,
                overrides=tuple(overrides),
                weights_file=weights,
                resources=resources,
                model=model,
                backbone=backbone,
                schedule=entry.get("schedule"),
                **(self._own_method_fields(entry, method) if method is not None else {}),
            )
            for seed in seeds
        ]

    def _check_method(
        self, entry: dict[str, Any], where: str, kind: str, method: dict[str, Any] | None, with_dcl: bool
    ) -> None:
        """An experiment's method: built in or declared; `dcl` settings and `baseline` where they belong."""
        if entry["method"] not in MODEL_HEADS["mask_rcnn"] and method is None:
            known = ", ".join(["baseline", "dcl", *self.methods])
            self._problems.append(
                f"{where}: method {entry['method']!r} is neither built in nor declared in `methods` (known: {known})"
            )
        if entry.get("dcl") and not with_dcl:
            self._problems.append(
                f"{where}: `dcl` settings need `method: dcl` (method is {entry['method']}), "
                "or a method of `methods` with `dcl: true`"
            )
        if method is None and "baseline" in entry:
            self._problems.append(
                f"{where}: `baseline` is for a method of the `methods` table "
                "(a DCL experiment is compared with the baseline of the same dataset and network)"
            )
        if method is not None and "baseline" not in entry and kind == "train":
            self._problems.append(
                f"{where}: method {entry['method']!r} needs `baseline`: the experiment it is compared against"
            )

    def _model_overrides(
        self,
        entry: dict[str, Any],
        where: str,
        method: dict[str, Any] | None,
        with_dcl: bool,
        model: str,
        backbone: str,
    ) -> list[tuple[str, str]]:
        """An experiment's config overrides: its own, the heads of its method, its `dcl` settings."""
        overrides = self._overrides(entry, where)
        depth = entry.get("overrides", {}).get("MODEL.RESNETS.DEPTH")
        number = re.search(r"[0-9]+", backbone)
        if depth is not None and number is not None and number.group() != str(depth):
            # The report would judge this network against another one's published numbers.
            self._problems.append(
                f"{where}: backbone {backbone} (default {DEFAULT_BACKBONE}) but MODEL.RESNETS.DEPTH is {depth}; "
                "set `backbone` to the network the overrides build"
            )
        if method is None:
            overrides += list(MODEL_HEADS[model].get(entry["method"], ()))
        else:
            # The detector's baseline heads, unless the method names its own; then the method's overrides.
            own = self._overrides(method, f"methods.{entry['method']}", allowed=METHOD_OVERRIDES)
            overrides += [pair for pair in MODEL_HEADS[model]["baseline"] if pair[0] not in dict(own)]
            overrides = own + overrides
        if with_dcl:
            overrides += [(DCL_KEY_PREFIX + k, format_override_value(v)) for k, v in entry.get("dcl", {}).items()]
        return overrides

    def _own_method_fields(self, entry: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
        """The fields of a run of a method of one's own (`methods`)."""
        return {
            "method_label": method["label"],
            "baseline": entry.get("baseline"),
            "dcl_on_top": bool(method.get("dcl")),
            "imports": self._method_imports.get(entry["method"], ()),
        }

    def _expand(self) -> None:
        config = self.config
        names: dict[str, str] = {}

        def claim(name: str, where: str) -> None:
            if name in names:
                self._problems.append(f"{where}: experiment name {name!r} is already used by {names[name]}")
            else:
                names[name] = where

        experiments: dict[str, dict[str, Any]] = {}
        for index, entry in enumerate(config["experiments"]):
            where = _location(["experiments", index], config)
            claim(entry["name"], where)
            experiments[entry["name"]] = entry
            self._where.setdefault(entry["name"], where)
            seeds = entry.get("seeds", config["defaults"]["seeds"])
            self.runs += self._model_runs(entry, where, kind="train", group="main", seeds=seeds)
        for index, sweep in enumerate(config["ablations"]):
            self._expand_ablation(
                f"ablations[{index}] ({sweep['base']} {sweep['parameter']})", sweep, experiments, names, claim
            )
        for index, entry in enumerate(config["released"]):
            where = _location(["released", index], config)
            claim(entry["name"], where)
            self._where.setdefault(entry["name"], where)
            self.runs += self._model_runs(entry, where, kind="released", group="released", seeds=[0])
        for entry in [*config["experiments"], *config["released"]]:
            if "baseline" in entry and entry["method"] in self.methods:
                self._check_baseline(entry, experiments)

    def _expand_ablation(
        self,
        where: str,
        sweep: dict[str, Any],
        experiments: dict[str, dict[str, Any]],
        names: dict[str, str],
        claim: Callable[[str, str], None],
    ) -> None:
        """The runs of one ablation sweep: one experiment per value, around its DCL base experiment."""
        base = experiments.get(sweep["base"])
        base_where = names.get(sweep["base"], where)
        if base is None:
            self._problems.append(
                f"{where}: base {sweep['base']!r} is not one of the `experiments`"
                + (f" (known: {', '.join(experiments)})" if experiments else "")
            )
            return
        if base["method"] != "dcl" and not (self.methods.get(base["method"]) or {}).get("dcl"):
            self._problems.append(
                f"{where}: base {sweep['base']!r} has method {base['method']}; "
                "ablations sweep a parameter of the contrastive loss (method: dcl, or a method with dcl: true)"
            )
            return
        parameter = sweep["parameter"]
        # A value equal to the base's effective one is the base experiment: not trained twice.
        base_value = base.get("dcl", {}).get(parameter, DCL_DEFAULTS[parameter])
        base_seeds = base.get("seeds", self.config["defaults"]["seeds"])
        seeds = sweep.get("seeds", base_seeds)
        for value in sweep["values"]:
            name = f"{sweep['base']}_{parameter.lower()}_{_slug(value)}"
            point_where = f"{where} value {value!r}"
            claim(name, point_where)
            entry = {**base, "name": name, "dcl": {**base.get("dcl", {}), parameter: value}}
            entry.pop("seeds", None)
            self._check_dcl_value(entry["dcl"], point_where)
            ablation = Ablation(parameter, DCL_KEY_PREFIX + parameter, value, sweep["base"])
            # The base experiment *is* this point when it has the value and the seeds: its runs are
            # reused (its folder), not trained twice. Problems of the base's own settings are
            # reported once, under the base.
            reused = _same_value(value, base_value) and set(seeds) <= set(base_seeds)
            self.runs += self._model_runs(
                entry,
                base_where,
                kind="train",
                group="ablation",
                seeds=seeds,
                ablation=ablation,
                folder=sweep["base"] if reused else None,
            )

    def _check_baseline(self, entry: dict[str, Any], experiments: dict[str, dict[str, Any]]) -> None:
        """A method of one's own is compared with an experiment of the same dataset (and metric)."""
        where, name = self._where[entry["name"]], entry["baseline"]
        other = experiments.get(name)
        if name == entry["name"]:
            self._problems.append(f"{where}: baseline {name!r} is the experiment itself")
        elif other is None:
            self._problems.append(
                f"{where}: baseline {name!r} is not one of the `experiments` (known: {', '.join(experiments)})"
            )
        elif other["dataset"] != entry["dataset"]:
            self._problems.append(
                f"{where}: baseline {name!r} is trained on {other['dataset']}, this experiment on {entry['dataset']}"
            )

    def _check_dcl_value(self, dcl: dict[str, Any], where: str) -> None:
        from jsonschema import Draft202012Validator

        schema = _schema()
        for error in Draft202012Validator(schema["$defs"]["dcl"]).iter_errors(dcl):
            self._problems.append(f"{where}: {error.message}")

    # -- queries ----------------------------------------------------------------------------
    def run(self, experiment: str, seed: int | str) -> Run:
        """The run whose results live in ``runs/{experiment}/seed{seed}``."""
        return self.jobs[(experiment, int(seed))]

    @property
    def train_jobs(self) -> list[Run]:
        return [r for r in self.jobs.values() if r.kind == "train"]

    @property
    def released_jobs(self) -> list[Run]:
        return [r for r in self.jobs.values() if r.kind == "released"]

    @property
    def datasets(self) -> list[str]:
        return sorted({r.dataset for r in self.jobs.values()})

    @property
    def downloads(self) -> dict[str, str]:
        """Checkpoints the runs need, local path (where `dcl weights` stores it) -> URL."""
        needed = {r.weights_file for r in self.jobs.values()}
        table = {self._download_path(item["url"], name): item["url"] for name, item in self.config["weights"].items()}
        return {path: url for path, url in sorted(table.items()) if path in needed}

    # Path patterns with {experiment} and {seed} (Snakemake wildcards), and their values for a run.
    @property
    def run_dir_pattern(self) -> str:
        """A run's results folder (``run.json``, ``eval.json``, ...)."""
        return f"{self.results}/{layout.RUN_DIR}"

    @property
    def output_dir_pattern(self) -> str:
        """detectron2's OUTPUT_DIR of a run (checkpoints, predictions): in the work directory."""
        return f"{self.work}/{layout.OUTPUT_DIR}"

    @property
    def predictions_pattern(self) -> str:
        return f"{self.output_dir_pattern}/{layout.PREDICTIONS}"

    def output_dir(self, run_: Run) -> str:
        return self.output_dir_pattern.format(experiment=run_.folder, seed=run_.seed)

    def results_dir(self, run_: Run) -> str:
        return f"{self.results}/{run_.run_dir}"

    def predictions(self, run_: Run) -> str:
        return self.predictions_pattern.format(experiment=run_.folder, seed=run_.seed)

    def log_pattern(self, step: str) -> str:
        """The log file of a run's workflow step (``train``, ``inference``, ``evaluate``, ``errors``,
        ``errors_legacy``; or a ``{wildcard}``), with ``{experiment}`` and ``{seed}`` wildcards."""
        return f"{self.logs}/{layout.LOG.format(step=step, experiment='{experiment}', seed='{seed}')}"

    def logs_of(self, run_: Run) -> dict[str, str]:
        """Each workflow step's log file of a run (paths relative to the working directory)."""
        steps = ("train" if run_.kind == "train" else "inference", "evaluate", *layout.ERROR_ANALYSES)
        return {step: self.log_pattern(step).format(experiment=run_.folder, seed=run_.seed) for step in steps}

    def _from_results(self, path: str) -> str:
        """A working-directory path as ``experiments.json`` gives it: relative to the results
        directory, so the tree can be moved as a whole (absolute when either path is)."""
        if os.path.isabs(path) or os.path.isabs(self.results):
            return str(self.working_dir / path)
        return os.path.relpath(path, self.results)

    def gt(self, dataset: str) -> str:
        """The validation ground truth (COCO JSON) ``dcl evaluate`` and ``dcl errors`` compare to."""
        return f"{self.datasets_root}/{DATASET_SPECS[dataset].gt}"

    def errors_gt(self, dataset: str, legacy: bool = False) -> str:
        """The GT of ``dcl errors``: the original tool's file for the legacy analysis where the
        dataset has one (Cityscapes: Detectron's conversion), else ``gt``."""
        legacy_gt = DATASET_SPECS[dataset].legacy_gt
        return f"{self.datasets_root}/{legacy_gt}" if legacy and legacy_gt else self.gt(dataset)

    def occlusion_gt(self, dataset: str) -> str | None:
        """The occlusion subset (COCO-OCC) the runs of ``dataset`` are also scored on: the config's
        ``occlusion_subset`` for COCO datasets, when the file exists or the workflow makes it
        (the toy one); else None (the report then says so in one line)."""
        path = self.occlusion_subset
        if path is None or not DATASET_SPECS[dataset].occlusion:
            return None
        toy_subset = f"{self.datasets_root}/{DATASET_SPECS[dataset].root_folder}/{layout.TOY_OCCLUSION_SUBSET}"
        made_here = DATASET_SPECS[dataset].toy and path == toy_subset
        return path if made_here or (self.working_dir / path).is_file() else None

    def occlusion_document(self) -> dict[str, Any] | None:
        """What experiments.json says about the occlusion subset: its path and whether it is used."""
        path = self.occlusion_subset
        coco = [r.dataset for r in self.runs if DATASET_SPECS[r.dataset].occlusion]
        if path is None or not coco:
            return None
        return {"path": path, "used": self.occlusion_gt(coco[0]) is not None}

    def cityscapes_root(self, dataset: str) -> str | None:
        root = DATASET_SPECS[dataset].cityscapes_root
        return None if root is None else f"{self.datasets_root}/{root}"

    def evaluate_options(self, run_: Run) -> str:
        """``dcl evaluate`` options beyond predictions, GT and output: the official Cityscapes AP
        for Cityscapes datasets, the configured COCO backend."""
        words = []
        root = self.cityscapes_root(run_.dataset)
        if root is not None:
            words += ["--cityscapes-root", root, "--split", "val"]
        if self.config["evaluation"]["backend"]:
            words += ["--backend", self.config["evaluation"]["backend"]]
        return shlex.join(words)

    def errors_options(self, legacy: bool) -> str:
        """``dcl errors`` options: the original tool's unmatched-detection handling for the legacy
        analysis, the configured COCO backend."""
        words = ["--legacy-unmatched"] if legacy else []
        if self.config["evaluation"]["backend"]:
            words += ["--backend", self.config["evaluation"]["backend"]]
        return shlex.join(words)

    def environment(self) -> list[str]:
        """Environment assignments every ``dcl train`` gets, so the datasets root and weights
        directory of the config are the ones it reads, whatever the calling shell has set."""
        return [
            f"DETECTRON2_DATASETS={self.datasets_root}",
            f"DCL_TOY_DATASETS={self.datasets_root}/{layout.TOY_DIR}",
            f"DCL_WEIGHTS_DIR={self.weights_dir}",
        ]

    def train_arguments(self, run_: Run) -> list[str]:
        """``dcl train`` arguments for a run, without ``--num-gpus`` (see :meth:`train_command`).
        Training always resumes from the last checkpoint in OUTPUT_DIR, so a
        job that was stopped (time limit, pre-emption, failure) continues when it is re-run."""
        args = [word for path in run_.imports for word in ("--import", path)]
        args += ["--config-file", run_.config_file]
        if run_.kind == "released":
            args += ["--eval-only"]
        else:
            args += ["--resume", "--max-chunks", str(self.max_chunks), "--keep-checkpoints", str(self.keep_checkpoints)]
        args += ["--results-dir", self.results_dir(run_)]
        args += self.tracking_arguments(run_)
        pairs = list(run_.overrides)
        if run_.weights_file is not None:
            pairs.append(("MODEL.WEIGHTS", run_.weights_file))
        pairs += self.global_overrides
        pairs += [("SEED", str(run_.seed)), ("OUTPUT_DIR", self.output_dir(run_))]
        for key, value in pairs:
            args += [key, value]
        return args

    def train_command(self, run_: Run, gpus: int | None = None, threads: int | None = None) -> str:
        """The shell command of a run's training or inference job: what the workflow's train and
        inference rules run (with their log redirection) and ``dcl plan --commands`` prints.

        Args:
            gpus, threads: the job's GPUs and CPU threads; default the run's resources (a job's
                resources, e.g. ``--set-resources train:gpu=2``, may differ).
        """
        gpus = run_.resources.gpus if gpus is None else gpus
        threads = run_.resources.cpus if threads is None else threads
        # A CPU run (gpu=0, MODEL.DEVICE cpu) is one worker process.
        words = ["env", *self.environment(), f"OMP_NUM_THREADS={threads}", "dcl", "train"]
        words += ["--num-gpus", str(max(1, gpus)), *self.train_arguments(run_)]
        return shlex.join(words)

    def cost(self, run_: Run) -> cost.RunCost:
        """A training's estimated GPU-hours, Slurm chunks and checkpoint disk (:mod:`dcl.workflow.cost`)."""
        overrides = [*run_.overrides, *self.global_overrides]  # in the order train_arguments passes them
        schedule = cost.schedule(str(self.working_dir / run_.config_file), overrides)
        resources = run_.resources
        return cost.run_cost(
            DATASET_SPECS[run_.dataset].format,
            run_.model,
            schedule,
            resources.gpus,
            resources.runtime,
            self.keep_checkpoints,
        )

    def cpu_step_seconds(self, run_: Run) -> float:
        """The estimated CPU time of a run's evaluation and error analyses at full size."""
        return cost.cpu_step_seconds(DATASET_SPECS[run_.dataset].format, self.occlusion_gt(run_.dataset) is not None)

    def document(self) -> dict[str, Any]:
        """``experiments.json``: the preset and every run the report should find."""
        runs = []
        for run_ in self.runs:
            # Where `dcl status` and `dcl report` find the live run.json of a run that has not
            # finished, and the logs of its steps.
            runs.append(
                {
                    **run_.record(),
                    "output_dir": self._from_results(self.output_dir(run_)),
                    "logs": {step: self._from_results(path) for step, path in self.logs_of(run_).items()},
                }
            )
        return {"preset": self.preset, "occlusion_subset": self.occlusion_document(), "runs": runs}

    @property
    def custom_experiments(self) -> list[Run]:
        """One run of each experiment (and released model) of a method of the `methods` table."""
        first: dict[str, Run] = {}
        for run_ in self.jobs.values():
            if run_.method_label is not None:
                first.setdefault(run_.experiment, run_)
        return list(first.values())

    def method_checks(self) -> list[dict[str, Any]]:
        """What ``dcl plan --check-methods`` (:mod:`dcl.training.methods`, with detectron2) verifies of each
        experiment of a method of one's own before any job runs: its imports load, the registry
        names its config asks for exist, its detectron2 config with every override loads."""
        checks = []
        for run_ in self.custom_experiments:
            pairs = [*run_.overrides, *self.global_overrides, ("SEED", str(run_.seed))]
            checks.append(
                {
                    "where": self._where.get(run_.experiment, run_.experiment),
                    "experiment": run_.experiment,
                    "method": run_.method,
                    "imports": [str(self.working_dir / p) if is_import_path(p) else p for p in run_.imports],
                    "config_file": str(self.working_dir / run_.config_file),
                    "overrides": [word for pair in pairs for word in pair],
                }
            )
        return checks

    def check_methods(self) -> None:
        """Run :meth:`method_checks` in a subprocess (``python -m dcl.training.methods``: it imports torch and
        detectron2, which the Snakefile and ``dcl plan`` must not). Nothing to do without a method
        of one's own.

        Raises:
            InputError: one line per problem (experiment, method, the module or name at fault).
        """
        checks = self.method_checks()
        if not checks:
            return
        import subprocess

        package_root = str(Path(__file__).resolve().parent.parent)  # the same dcl as this one
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        result = subprocess.run(
            [sys.executable, "-m", "dcl.training.methods", "-"],
            input=json.dumps(checks),
            capture_output=True,
            text=True,
            env=env,
            cwd=self.working_dir,
        )
        if result.returncode == 0:
            return
        lines = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
        if not lines:  # it crashed: the end of what it said
            lines = ["  - checking the methods failed: " + " | ".join(result.stderr.strip().splitlines()[-5:])]
        raise InputError(f"invalid {self.source}:\n" + "\n".join(lines))

    def digest(self) -> str:
        """Changes exactly when ``experiments.json`` would (the plan rule's rerun trigger)."""
        return hashlib.sha256(json.dumps(self.document(), sort_keys=True).encode()).hexdigest()[:16]
