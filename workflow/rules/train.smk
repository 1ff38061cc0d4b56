# Training (one job per experiment x seed) and inference of released checkpoints. The command
# is dcl.workflow.experiments.Plan.train_command (what `dcl plan --commands` prints), with --num-gpus and
# OMP_NUM_THREADS from the job's resources and threads.
#
# Stopping and resuming: `dcl train` checkpoints and exits 75 on SIGTERM/SIGUSR1/SIGINT, and every
# training command passes --resume, so a re-run continues from OUTPUT_DIR's last checkpoint: in a
# Slurm job dcl train requeues that job itself (`--max-chunks`), elsewhere the next invocation. Checkpoints are not declared outputs, so Snakemake
# never deletes them when a job fails. Under the Slurm executor the job runs as
# `srun ... python -m snakemake` (a job step) -> bash -> dcl train; Slurm's `--signal=TERM@300`
# (no `B:`; dcl.slurm.stop_signal_option: less for limits under 10 minutes) signals every process
# of the job steps 300 s before the time limit: Snakemake handles TERM by waiting for its running
# job, and `exec` makes dcl train the shell itself, so the signal reaches it directly. (`B:USR1` would reach only the batch shell, and plain USR1 would kill the
# job step's Snakemake, and with it the step, before the checkpoint is written.)


# A training or inference job's resources, from its experiment in the workflow config.
RUN_RESOURCES = dict(
    gpu=lambda wildcards: run_of(wildcards).resources.gpus,
    # Slurm's --cpus-per-task, stated: `threads` depend on the submitting host's --cores.
    cpus_per_task=lambda wildcards: run_of(wildcards).resources.cpus,
    mem_mb=lambda wildcards: run_of(wildcards).resources.mem_mb,
    runtime=lambda wildcards: run_of(wildcards).resources.runtime,
)


rule train:
    """Train and evaluate one run (experiment x seed) as a GPU job, resumable (dcl train)."""
    input:
        unpack(model_inputs),
    output:
        run=f"{RUN_DIR}/{layout.RUN_RECORD}",
        metrics=f"{RUN_DIR}/{layout.TRAINING_METRICS}",
        predictions=PREDICTIONS,
    log:
        PLAN.log_pattern("train"),
    wildcard_constraints:
        experiment=TRAINED,
    # Time limits and pre-emption are not failures: dcl train requeues its own Slurm job for the
    # next chunk (--max-chunks, from the workflow config). A failure (exit 1) is submitted once
    # more; only by the main Snakemake: inside a cluster job this would rerun it in the same job.
    retries: 1 if workflow.is_main_process else 0
    conda:
        "../envs/dcl.yaml"
    threads: lambda wildcards: run_of(wildcards).resources.cpus
    resources:
        **RUN_RESOURCES,
        slurm_extra=lambda wildcards: stop_signal_option(run_of(wildcards).resources.runtime),
    params:
        command=lambda wildcards, resources, threads: PLAN.train_command(
            run_of(wildcards), gpus=resources.gpu, threads=threads
        ),
    shell:
        "exec {params.command} > {log:q} 2>&1"


# Released checkpoints: the same command, which for them is `dcl train --eval-only` and writes
# predictions; nothing is trained, so there are no training metrics and no checkpoint to save
# before a time limit.
use rule train as inference with:
    """Evaluate a released checkpoint without training (dcl train --eval-only)."""
    output:
        run=f"{RUN_DIR}/{layout.RUN_RECORD}",
        predictions=PREDICTIONS,
    log:
        PLAN.log_pattern("inference"),
    wildcard_constraints:
        experiment=RELEASED,
    resources:
        **RUN_RESOURCES,
