# The whole paper as one DAG: data checks -> weights -> training -> evaluation -> error analysis
# -> tables and figures. Rules live in workflow/rules/, in pipeline order; each is one `dcl` call.
#
#   snakemake --profile slurm                  # the paper, on a Slurm cluster (login node)
#   snakemake --profile profiles/local --config preset=toy   # the synthetic toy run, on CPU
#   snakemake -n                               # the plan, without running anything
#
# The config is configs/<preset>.yaml (preset: paper unless --config preset=... or a
# --configfile says otherwise); it is validated against workflow/schemas/config.schema.yaml
# before anything runs. See configs/README.md.
import os

from snakemake.utils import min_version
from snakemake_interface_common.exceptions import WorkflowError

from dcl.workflow.experiments import refuse_templated_config
from dcl.io import InputError

min_version("9.0")

# A preset file is loaded whole, so `--configfile configs/toy.yaml` or `--config preset=toy`
# never inherit paper.yaml's keys; a config file of one's own (preset without a file in configs/)
# is used as it is.
PRESET_FILE = os.path.join(workflow.basedir, "configs", f"{config.get('preset', 'paper')}.yaml")
if os.path.exists(PRESET_FILE):
    # Snakemake renders a config that asks for it (__use_yte__) as a template, running its Python:
    # refused before it is loaded. (Files given with --configfile are loaded before this runs.)
    try:
        refuse_templated_config(PRESET_FILE)
    except InputError as error:
        raise WorkflowError(str(error)) from None

    configfile: PRESET_FILE


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/errors.smk"
include: "workflow/rules/report.smk"


rule all:
    """Every table, figure and the results README of the preset."""
    default_target: True
    input:
        final_outputs(),
    localrule: True
