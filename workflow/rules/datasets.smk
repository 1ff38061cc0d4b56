# Data: the check runs first, on the login node, so a missing dataset fails before any GPU job
# is submitted, with what to download and where to put it. A dry run needs no data.


rule toy_data:
    """Generate the synthetic toy COCO and Cityscapes datasets (dcl data toy)."""

    # A directory output: Snakemake must not create folders inside it before `dcl data toy` runs
    # (it refuses a non-empty directory that is not already a toy dataset).
    output:
        directory(f"{ROOT}/{layout.TOY_DIR}"),
    log:
        f"{LOGS}/data/toy.log",
    localrule: True
    conda:
        "../envs/dcl.yaml"
    shell:
        "dcl data toy --out {output:q} > {log:q} 2>&1"


rule check_dataset:
    """Check a dataset's files before any GPU job is queued (dcl data check)."""
    input:
        # The toy datasets are made by the workflow; the real ones are the user's to download.
        lambda wildcards: rules.toy_data.output if DATASET_SPECS[wildcards.dataset].toy else [],
    output:
        check_stamp("{dataset}"),
    log:
        f"{LOGS}/data/check_{{dataset}}.log",
    localrule: True
    conda:
        "../envs/dcl.yaml"
    params:
        env=DCL_ENV,
        root=ROOT,
        # COCO-OCC, where the user has it: validated here too (absent: a note, not an error).
        occlusion=lambda wildcards: (
            f"--occlusion-subset {shlex.quote(PLAN.occlusion_subset)}"
            if DATASET_SPECS[wildcards.dataset].occlusion
            and not DATASET_SPECS[wildcards.dataset].toy
            and PLAN.occlusion_subset
            else ""
        ),
    shell:
        "{params.env} dcl data check --dataset {wildcards.dataset:q} --root {params.root:q} {params.occlusion} -o {output:q} > {log:q} 2>&1"


rule cityscapes_to_coco:
    """Cityscapes val as COCO JSON, the GT of evaluation and error analysis."""

    # detectron2 evaluates Cityscapes val from this COCO JSON (docs/design.md), and so do
    # `dcl evaluate` and `dcl errors`: one set of image ids from training to the error tables.
    input:
        ancient(check_stamp("cityscapes")),
    output:
        PLAN.gt("cityscapes"),
    log:
        f"{LOGS}/data/cityscapes_to_coco.log",
    localrule: True
    conda:
        "../envs/dcl.yaml"
    params:
        # The Cityscapes folder of the output (<folder>/annotations/<file>): `snakemake --lint` wants
        # an output's prefix derived from it, not spelt again.
        root=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "dcl data cityscapes-to-coco {params.root:q} --split val -o {output:q} > {log:q} 2>&1"


rule cityscapes_to_coco_detectron:
    """Cityscapes val as COCO JSON by Detectron's rules, the GT of the legacy error analysis."""

    # The GT of the original error analysis (Detectron's conversion rules), for errors_legacy:
    # same image and category ids as the file above, so the same predictions score on both.
    # (`dcl data toy` writes the toy one itself.)
    input:
        ancient(check_stamp("cityscapes")),
    output:
        PLAN.errors_gt("cityscapes", legacy=True),
    log:
        f"{LOGS}/data/cityscapes_to_coco_detectron.log",
    localrule: True
    conda:
        "../envs/dcl.yaml"
    params:
        # The Cityscapes folder of the output (<folder>/annotations/<file>): `snakemake --lint` wants
        # an output's prefix derived from it, not spelt again.
        root=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "dcl data cityscapes-to-coco {params.root:q} --split val --style detectron -o {output:q} > {log:q} 2>&1"
