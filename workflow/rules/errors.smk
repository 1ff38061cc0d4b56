# The segmentation-error analysis of each run: how much AP removing fFP, bFP or FN would gain.
# `errors.json` matches each detection correctly; `errors_legacy.json` reproduces the original
# tool, which the paper's tables used (an unmatched detection counts against the last GT).


rule errors:
    input:
        unpack(evaluation_inputs),
    output:
        f"{RUN_DIR}/{{analysis}}.json",
    log:
        PLAN.log_pattern("{analysis}"),
    wildcard_constraints:
        analysis="errors|errors_legacy",
    threads: 1
    params:
        gt=lambda wildcards: PLAN.gt(run_of(wildcards).dataset),
        options=lambda wildcards: PLAN.errors_options(wildcards.analysis == "errors_legacy"),
    conda:
        "../envs/dcl.yaml"
    shell:
        "dcl errors {input.predictions:q} -a {params.gt:q} {params.options} -j {threads} -o {output:q} > {log:q} 2>&1"
