# The segmentation-error analysis of each run: how much AP removing fFP, bFP or FN would gain.
# `errors.json` matches each detection correctly; `errors_legacy.json` reproduces the original
# tool, which the paper's tables used (an unmatched detection counts against the last GT), on
# the original tool's GT: for Cityscapes the file Detectron's converter wrote (PLAN.errors_gt).
# COCO runs, where the occlusion subset (COCO-OCC) is there, get both on it too (*_occ.json),
# from the val predictions mapped onto its images by file name.


rule errors:
    """Segmentation-error analysis of one run: AP gain from removing fFP, bFP, FN (dcl errors)."""
    input:
        unpack(errors_inputs),
    output:
        f"{RUN_DIR}/{{analysis}}.json",
    log:
        PLAN.log_pattern("{analysis}"),
    wildcard_constraints:
        analysis=_alternatives([*layout.ERROR_ANALYSES, *map(layout.on_occlusion, layout.ERROR_ANALYSES)]),
    conda:
        "../envs/dcl.yaml"
    threads: 1
    params:
        gt=errors_gt,
        options=lambda wildcards: " ".join(
            filter(
                None,
                [
                    subset_options(wildcards),
                    PLAN.errors_options(layout.split_occlusion(wildcards.analysis)[0] == layout.LEGACY_ERRORS),
                ],
            )
        ),
    shell:
        "dcl errors {input.predictions:q} -a {params.gt:q} {params.options} -j {threads} -o {output:q} > {log:q} 2>&1"
