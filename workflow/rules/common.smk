# Config validation and the wiring helpers every rule uses. The logic (what a config means, which
# runs exist, their command lines) is dcl.workflow.experiments; this file only connects it to Snakemake.
import json
import os
import re
import shlex
import sys

from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError

from dcl import layout
from dcl.workflow.experiments import Plan
from dcl.io import InputError
from dcl.layout import DATASET_SPECS
from dcl.slurm import stop_signal_option


def _relative(path):
    """A path as the user would type it: relative to the working directory when inside it."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _config_sources():
    """The config files in the order Snakemake layered them, and the --config assignments."""
    files = [_relative(PRESET_FILE)] if os.path.exists(PRESET_FILE) else []
    for path in workflow.config_settings.configfiles:
        if _relative(path) not in files:
            files.append(_relative(path))
    assignments = []
    for key, value in workflow.config_settings.config.items():
        assignments.append(f"{key}=" if value is None else f"{key}={json.dumps(value)}")
    return files, assignments


CONFIG_FILES, CONFIG_ASSIGNMENTS = _config_sources()
try:
    PLAN = Plan(
        config,
        source=" + ".join(CONFIG_FILES + (["--config"] if CONFIG_ASSIGNMENTS else [])) or "workflow config",
        repo_root=workflow.basedir,
        working_dir=os.getcwd(),
    )
    # Methods of one's own (`methods`): their modules import, their registered names exist and
    # their configs load, checked in a subprocess (detectron2) before any job; none: nothing runs.
    # Once, by the main process (not again in each job's own Snakemake on a cluster node).
    if workflow.is_main_process:
        PLAN.check_methods()
except InputError as error:
    # One line per problem, with its place in the config; no traceback for a typo.
    raise WorkflowError(str(error)) from None
# The standard Snakemake check too (the same schema; it can no longer fail here).
validate(config, "../schemas/config.schema.yaml")

RESULTS = PLAN.results
WORK = PLAN.work
LOGS = PLAN.logs
ROOT = PLAN.datasets_root
WEIGHTS = PLAN.weights_dir
RUN_DIR = PLAN.run_dir_pattern
PREDICTIONS = PLAN.predictions_pattern
# Every dcl call sees the config's datasets root, whatever the calling shell exports.
# Shell commands quote every placeholder that can hold user text: paths as {...:q}, and params
# built here (DCL_ENV, argument lists, commands) with shlex, so a config path is one word, never
# shell code.
DCL_ENV = shlex.join(["env", *PLAN.environment()])


def _alternatives(names):
    # A regex that matches nothing when there are no names (a rule with no jobs).
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


TRAINED = _alternatives({run.experiment for run in PLAN.train_jobs})
RELEASED = _alternatives({run.experiment for run in PLAN.released_jobs})


wildcard_constraints:
    seed=r"\d+",
    dataset=_alternatives(DATASET_SPECS),


def run_of(wildcards):
    return PLAN.run(wildcards.experiment, wildcards.seed)


def check_stamp(dataset):
    return f"{WORK}/{layout.CHECK_STAMP.format(dataset=dataset)}"


def dataset_inputs(dataset):
    """What must exist before a run of ``dataset`` trains or is evaluated: the data check (which
    for the toy datasets waits for their generation), and for Cityscapes the validation ground
    truth converted to COCO JSON. ``ancient``: re-checking the data must not make finished runs
    look outdated."""
    inputs = {"data_check": ancient(check_stamp(dataset))}
    if DATASET_SPECS[dataset].format == "cityscapes" and not DATASET_SPECS[dataset].toy:
        inputs["gt"] = ancient(PLAN.gt(dataset))
    return inputs


def model_inputs(wildcards):
    run = run_of(wildcards)
    inputs = dataset_inputs(run.dataset)
    if run.weights_file is not None:
        inputs["weights"] = ancient(run.weights_file)
    return inputs


def evaluation_inputs(wildcards):
    run = run_of(wildcards)
    return {"predictions": PREDICTIONS.format(**wildcards), **dataset_inputs(run.dataset)}


def errors_gt(wildcards):
    """GT of an analysis: errors / errors_legacy on val (the legacy one on the original tool's GT),
    *_occ on the occlusion subset."""
    dataset = run_of(wildcards).dataset
    analysis, occlusion = layout.split_occlusion(wildcards.analysis)
    if occlusion:
        return PLAN.occlusion_gt(dataset)
    return PLAN.errors_gt(dataset, analysis == layout.LEGACY_ERRORS)


def _with_gt(inputs, dataset, gt):
    """``inputs`` plus a GT file other than val's: made by cityscapes_to_coco_detectron, or the
    user's COCO-OCC file. Toy ones are part of the toy data (the data check waits for it)."""
    if gt != PLAN.gt(dataset) and not DATASET_SPECS[dataset].toy:
        inputs["analysis_gt"] = ancient(gt)
    return inputs


def errors_inputs(wildcards):
    return _with_gt(evaluation_inputs(wildcards), run_of(wildcards).dataset, errors_gt(wildcards))


def occlusion_inputs(wildcards):
    dataset = run_of(wildcards).dataset
    return _with_gt(evaluation_inputs(wildcards), dataset, PLAN.occlusion_gt(dataset))


def subset_options(wildcards):
    """For the occlusion subset (evaluate_occ, and the errors rule's *_occ analyses): the val
    predictions are mapped onto its images by file name."""
    if wildcards.get("analysis") is None or layout.split_occlusion(wildcards.analysis)[1]:
        return shlex.join(["--predictions-gt", PLAN.gt(run_of(wildcards).dataset)])
    return ""


def run_outputs(run):
    """The files one run folder holds when the run is complete."""
    folder = PLAN.results_dir(run)
    names = layout.run_files(run.kind, occlusion=PLAN.occlusion_gt(run.dataset) is not None)
    return [f"{folder}/{name}" for name in names]


def all_run_outputs():
    return [path for run in PLAN.jobs.values() for path in run_outputs(run)]


def final_outputs():
    return [f"{RESULTS}/{layout.EXPERIMENTS}", f"{RESULTS}/README.md"]
