# Aggregation on the login node: the list of expected runs, then the paper's tables and figures.
# `snakemake --report report.zip` collects the tables and figures with their captions
# (workflow/report/*.rst).

# What `dcl report` writes (plain data: no pandas or matplotlib loaded).
from dcl.report.outputs import FIGURE_FORMATS, FIGURE_NAMES, TABLE_FORMATS, TABLE_NAMES

REPORT_ARGS = shlex.join(
    [
        RESULTS,
        "--experiments",
        f"{RESULTS}/{layout.EXPERIMENTS}",
        *(["--published", PLAN.published] if PLAN.published else []),
        *PLAN.report_tracking_arguments(),
    ]
)


rule plan:
    """The expanded list of runs, experiments.json (dcl plan)."""

    # Rewritten when the expanded run list (its digest: a rerun trigger) or the config sources change.
    output:
        f"{RESULTS}/{layout.EXPERIMENTS}",
    log:
        f"{LOGS}/plan.log",
    localrule: True
    conda:
        "../envs/dcl.yaml"
    params:
        configs=shlex.join(CONFIG_FILES),
        assignments=shlex.join(["--config", *CONFIG_ASSIGNMENTS]) if CONFIG_ASSIGNMENTS else "",
        digest=PLAN.digest(),
        # The checkout this Snakefile is in, whatever the working directory (snakemake -s).
        repo_root=workflow.basedir,
    shell:
        "dcl plan {params.configs} {params.assignments} --repo-root {params.repo_root:q} -o {output:q} > {log:q} 2>&1"


rule report:
    """Tables, figures and the results README from every run (dcl report)."""
    input:
        experiments=f"{RESULTS}/{layout.EXPERIMENTS}",
        runs=all_run_outputs(),
        published=PLAN.published or [],
    output:
        readme=f"{RESULTS}/README.md",
        # report.pdf beside it where pdflatex is installed (not declared: it may not be).
        document=f"{RESULTS}/report.tex",
        tables=[
            report(
                f"{RESULTS}/tables/{name}.html",
                caption=f"../report/table_{name}.rst",
                category="Tables",
                labels={"table": name},
            )
            for name in TABLE_NAMES
        ],
        # `snakemake --report` collects the HTML tables and PNG figures; the other formats:
        table_files=[f"{RESULTS}/tables/{name}.{ext}" for name in TABLE_NAMES for ext in TABLE_FORMATS if ext != "html"],
        figures=[
            report(
                f"{RESULTS}/figures/{name}.png",
                caption=f"../report/figure_{name}.rst",
                category="Figures",
                labels={"figure": name},
            )
            for name in FIGURE_NAMES
        ],
        figure_files=[
            f"{RESULTS}/figures/{name}.{ext}" for name in FIGURE_NAMES for ext in FIGURE_FORMATS if ext != "png"
        ],
    log:
        f"{LOGS}/report.log",
    localrule: True
    conda:
        "../envs/dcl.yaml"
    params:
        args=REPORT_ARGS,
    shell:
        "dcl report {params.args} > {log:q} 2>&1"


onerror:
    # Some job failed (with keep-going, once every other job has ended): the report rule did not
    # run, so write the tables, figures and README of everything that finished, each failed run
    # listed with its reason and log. Through this Snakemake's Python, which imports dcl already.
    if os.path.exists(f"{RESULTS}/{layout.EXPERIMENTS}"):
        log, readme = shlex.quote(f"{LOGS}/report.log"), shlex.quote(f"{RESULTS}/README.md")
        shell(
            f"mkdir -p {shlex.quote(LOGS)} && {shlex.quote(sys.executable)} -m dcl report {REPORT_ARGS} > {log} 2>&1 "
            f"&& echo 'dcl report: some runs failed; the report of what finished:' {readme} "
            f"|| echo 'dcl report failed too: see' {log}"
        )
