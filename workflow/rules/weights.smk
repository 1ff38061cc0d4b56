# Checkpoints (ImageNet/COCO initialisations, released models) are downloaded on the login node,
# which has internet; compute jobs find them in the weights directory.


rule download_weights:
    """Download a checkpoint into the weights directory on the login node (dcl weights download)."""
    output:
        f"{WEIGHTS}/{{weights_file}}",
    log:
        f"{LOGS}/weights/{{weights_file}}.log",
    wildcard_constraints:
        weights_file=_alternatives(os.path.relpath(path, WEIGHTS) for path in PLAN.downloads),
    localrule: True
    conda:
        "../envs/dcl.yaml"
    params:
        url=lambda wildcards: PLAN.downloads[f"{WEIGHTS}/{wildcards.weights_file}"],
        # <weights dir>/<weights_file>
        weights_dir=lambda wildcards, output: output[0][: -len(wildcards.weights_file) - 1],
    shell:
        "dcl weights download {params.url:q} --weights-dir {params.weights_dir:q} > {log:q} 2>&1"
