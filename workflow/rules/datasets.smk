# Data: the check runs first, on the login node, so a missing dataset fails before any GPU job
# is submitted, with what to download and where to put it. A dry run needs no data.


rule toy_data:
    # A directory output: Snakemake must not create folders inside it before `dcl data toy` runs
    # (it refuses a non-empty directory that is not already a toy dataset).
    output:
        directory(f"{ROOT}/toy"),
    log:
        f"{LOGS}/data/toy.log",
    localrule: True
    conda:
        "../envs/dcl.yaml"
    shell:
        "dcl data toy --out {output} > {log} 2>&1"


rule check_dataset:
    input:
        # The toy datasets are made by the workflow; the real ones are the user's to download.
        lambda wildcards: rules.toy_data.output if DATASETS[wildcards.dataset].toy else [],
    output:
        check_stamp("{dataset}"),
    log:
        f"{LOGS}/data/check_{{dataset}}.log",
    localrule: True
    params:
        env=DCL_ENV,
        root=ROOT,
    conda:
        "../envs/dcl.yaml"
    shell:
        "{params.env} dcl data check --dataset {wildcards.dataset} --root {params.root} -o {output} > {log} 2>&1"


rule cityscapes_to_coco:
    # detectron2 evaluates Cityscapes val from this COCO JSON (docs/design.md), and so do
    # `dcl evaluate` and `dcl errors`: one set of image ids from training to the error tables.
    input:
        ancient(check_stamp("cityscapes")),
    output:
        PLAN.gt("cityscapes"),
    log:
        f"{LOGS}/data/cityscapes_to_coco.log",
    localrule: True
    params:
        # <cityscapes root>/annotations/<file>
        root=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
    conda:
        "../envs/dcl.yaml"
    shell:
        "dcl data cityscapes-to-coco {params.root} --split val -o {output} > {log} 2>&1"


rule cityscapes_to_coco_detectron:
    # The GT of the original error analysis (Detectron's conversion rules), for errors_legacy:
    # same image and category ids as the file above, so the same predictions score on both.
    # {cityscapes}: the dataset's folder under the datasets root (cityscapes or toy/cityscapes).
    input:
        lambda wildcards: ancient(check_stamp(CITYSCAPES_DATASET_OF_FOLDER[wildcards.cityscapes])),
    output:
        f"{ROOT}/{{cityscapes}}/annotations/instancesonly_filtered_gtFine_val.detectron.json",
    log:
        f"{LOGS}/data/cityscapes_to_coco_detectron_{{cityscapes}}.log",
    wildcard_constraints:
        cityscapes=_alternatives(CITYSCAPES_DATASET_OF_FOLDER),
    localrule: True
    params:
        root=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
    conda:
        "../envs/dcl.yaml"
    shell:
        "dcl data cityscapes-to-coco {params.root} --split val --style detectron -o {output} > {log} 2>&1"
