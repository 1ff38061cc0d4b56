# COCO mask/box AP of each run's predictions, plus the official Cityscapes AP on Cityscapes data.


rule evaluate:
    """Mask AP of one run's predictions, COCO and official Cityscapes (dcl evaluate)."""
    input:
        unpack(evaluation_inputs),
    output:
        f"{RUN_DIR}/{layout.EVALUATION}.json",
    log:
        PLAN.log_pattern("evaluate"),
    conda:
        "../envs/dcl.yaml"
    threads: 1
    params:
        gt=lambda wildcards: PLAN.gt(run_of(wildcards).dataset),
        options=lambda wildcards: PLAN.evaluate_options(run_of(wildcards)),
    shell:
        "dcl evaluate {input.predictions:q} -a {params.gt:q} {params.options} --threads {threads} -j {threads} -o {output:q} > {log:q} 2>&1"


# COCO runs on the occlusion subset (COCO-OCC), from the val predictions: no extra inference.
use rule evaluate as evaluate_occ with:
    """Mask AP of one COCO run's val predictions on the occlusion subset COCO-OCC (dcl evaluate)."""
    input:
        unpack(occlusion_inputs),
    output:
        f"{RUN_DIR}/{layout.on_occlusion(layout.EVALUATION)}.json",
    log:
        PLAN.log_pattern("evaluate_occ"),
    params:
        gt=lambda wildcards: PLAN.occlusion_gt(run_of(wildcards).dataset),
        options=lambda wildcards: " ".join(
            filter(None, [subset_options(wildcards), PLAN.evaluate_options(run_of(wildcards))])
        ),
