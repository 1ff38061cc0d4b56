"""Tests of ``dcl report`` on fabricated result trees with known numbers.

Every expected number is computed here from the fabricated inputs with independent formulas
(``statistics``, the t distribution's quantile and tail), never read back from the report.
The paper-like tree is built and reported once per module (report builds cost ~2 s: figures).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from dcl import cli
from dcl.io import InputError
from dcl import runs as dcl_runs
from dcl.report import build_report
from dcl.report import published as dcl_published
from dcl.report.analysis import error_types, paired_difference, summarize
from dcl.report.table import Column, flat_table, latex_escape, to_csv
from report_fixtures import (
    ABLATIONS,
    CAPTIONS,
    COCO_AP,
    COCO_BOX_AP,
    COCO_STATS,
    CS_AP,
    CS_AP50,
    FIGURES,
    PUBLISHED,
    REFINEMASK_AP,
    RELEASED_AP,
    REPO,
    TABLES,
    TYPES,
    build_paper_tree,
    coco_section,
    errors_record,
    finished_run_json,
    gains,
    mean_std,
    metrics_lines,
    only,
    paired_by_hand,
    read_csv,
    run_record,
    tree_hashes,
    write_run,
)


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    build_paper_tree(root)
    result = build_report(root, published_path=PUBLISHED)
    return root, result


# ----------------------------------------------------------------------------- statistics units
def test_summarize_and_paired_difference_match_hand_formulas():
    baseline = [35.0, 35.6, 36.1, 35.2]
    dcl = [36.4, 37.3, 36.9, 36.0]
    summary = summarize(dcl)
    assert (summary.mean, summary.std, summary.n) == pytest.approx((*mean_std(dcl), 4))
    difference = paired_difference(dict(enumerate(baseline)), dict(enumerate(dcl)))
    assert (difference.mean, difference.ci_low, difference.ci_high, difference.p_value) == pytest.approx(
        paired_by_hand(baseline, dcl)
    )
    # Pairing is by seed: unmatched seeds drop out, order of insertion does not matter.
    shuffled = paired_difference({3: 35.2, 0: 35.0, 7: 99.0}, {0: 36.4, 3: 36.0, 5: 1.0})
    assert shuffled.seeds == (0, 3)
    assert shuffled.mean == pytest.approx(((36.4 - 35.0) + (36.0 - 35.2)) / 2)


def test_paired_difference_edge_cases():
    one = paired_difference({0: 1.0}, {0: 3.0})
    assert one.mean == 2.0 and math.isnan(one.ci_low) and math.isnan(one.p_value)
    none = paired_difference({0: 1.0}, {1: 3.0})
    assert none.n == 0 and math.isnan(none.mean)
    constant = paired_difference({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0})  # identical differences
    assert (constant.mean, constant.ci_low, constant.ci_high) == pytest.approx((1.0, 1.0, 1.0))
    assert math.isnan(constant.p_value)
    single = summarize([5.0])
    assert single.mean == 5.0 and math.isnan(single.std)


def test_error_type_order_and_latex_escape():
    assert error_types([]) == []
    from dcl.report.analysis import ExperimentStats

    fake = ExperimentStats(runs=[], errors={t: {} for t in ("FN", "fFP&bFP&FN", "bFP", "baseline", "fFP&bFP", "fFP")})
    assert error_types([fake]) == ["fFP", "bFP", "FN", "fFP&bFP", "fFP&bFP&FN"]
    assert latex_escape("a_b & 50% #1 {x} ~^\\ $ ± − Δ †") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{} \$ $\pm$ $-$ $\Delta$ "
        r"\textsuperscript{\dag}"
    )


def test_a_column_is_defined_once_for_display_and_csv():
    """``value`` feeds the CSV, ``fmt``/``text`` the display; CSV-only and display-only columns."""
    columns = [
        Column("seed", "Seed", "r", value=lambda r: r[0]),
        Column("run_dir", value=lambda r: f"runs/x/seed{r[0]}", shown=False),
        Column("wall_time_s", "Wall time", "r", value=lambda r: r[1], fmt=lambda v: f"{v:.0f} s"),
        Column("note", "Note", text=lambda r: "slow" if r[1] > 60 else ""),
    ]
    table = flat_table("t", "T", "c", columns, [(0, 90.0), (1, 12.5)])
    assert [c.key for c in table.columns] == ["seed", "wall_time_s", "note"]
    assert table.rows == [
        {"seed": "0", "wall_time_s": "90 s", "note": "slow"},
        {"seed": "1", "wall_time_s": "12 s", "note": ""},
    ]
    assert to_csv(table) == "seed,run_dir,wall_time_s\n0,runs/x/seed0,90\n1,runs/x/seed1,12.5\n"


# ----------------------------------------------------------------------------- the paper-like tree
def test_all_outputs_written(paper):
    root, result = paper
    for name in TABLES:
        for extension in ("md", "tex", "csv", "html"):
            assert (root / "tables" / f"{name}.{extension}").stat().st_size > 0
    for name in FIGURES:
        assert (root / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert (root / "README.md").is_file() and (root / "report.tex").is_file()
    pdf = 1 if shutil.which("pdflatex") else 0
    assert len(result.written) == len(TABLES) * 4 + len(FIGURES) * 2 + 2 + pdf


def test_main_table_means_stds_and_counts(paper):
    root, _ = paper
    rows = read_csv(root / "tables" / "main_results.csv")
    markdown = (root / "tables" / "main_results.md").read_text()
    for experiment in CS_AP:
        values = [v for v in CS_AP[experiment] if v is not None]
        values50 = [v for v in CS_AP50[experiment] if v is not None]
        row = only(rows, experiment=experiment)
        assert int(row["seeds_with_results"]) == len(values) and int(row["seeds_expected"]) == 3
        mean, std = mean_std(values)
        assert float(row["AP_mean"]) == pytest.approx(mean, rel=1e-5)
        assert float(row["AP_std"]) == pytest.approx(std, rel=1e-5)
        assert float(row["AP50_mean"]) == pytest.approx(statistics.mean(values50), rel=1e-5)
        assert row["AP75_mean"] == ""  # Cityscapes reports AP and AP50 only
        assert f"{mean:.2f} ± {std:.2f}" in markdown
    # The incomplete group is flagged, not silently averaged.
    coco_init = markdown.split("### Cityscapes, COCO initialisation")[1].split("###")[0]
    assert "| Baseline | 2/3† | 36.20 ± 0.28 |" in coco_init
    # RefineMask shares the Cityscapes ImageNet table, after Mask R-CNN (named there), each detector
    # with its own published numbers and its own DCL − baseline, paired by seed.
    imagenet = markdown.split("### Cityscapes, ImageNet initialisation")[1].split("###")[0]
    methods = [line.split(" | ")[0].lstrip("| ") for line in imagenet.splitlines() if line.startswith("| ")][2:]
    assert methods == [
        "Mask R-CNN",
        "Mask R-CNN + DCL",
        "Mask R-CNN + DCL (released)",
        "Mask R-CNN + DCL − Mask R-CNN",
        "RefineMask",
        "RefineMask + DCL",
        "RefineMask + DCL − RefineMask",
    ]
    base = REFINEMASK_AP["cityscapes_imagenet_refinemask_baseline"]
    dcl = REFINEMASK_AP["cityscapes_imagenet_refinemask_dcl"]
    delta, low, high, p = paired_by_hand(base, dcl)
    assert (
        f"| RefineMask | 3/3 | {'%.2f ± %.2f' % mean_std(base)} | {statistics.mean(base) + 26:.2f} ± "
        f"{mean_std(base)[1]:.2f} | {statistics.mean(base) + 1.5:.2f} ± {mean_std(base)[1]:.2f} | "
        f"37.6* |"
    ) in imagenet  # published as COCO-style AP only
    assert "Paper *: published as COCO-style mask AP (compare with COCO AP)" in markdown
    assert f"| RefineMask + DCL | 3/3 | **{'%.2f ± %.2f' % mean_std(dcl)}** |" in imagenet and "| 39.3 |" in imagenet
    assert f"| RefineMask + DCL − RefineMask | 3 pairs | {delta:+.2f} |" in imagenet
    assert f"[{low:+.2f}, {high:+.2f}] | {p:.3f} |" in imagenet
    refinemask = only(rows, experiment="cityscapes_imagenet_refinemask_dcl")
    assert (refinemask["model"], refinemask["method"], refinemask["published"]) == ("refinemask", "dcl", "39.3")
    assert float(refinemask["delta_mean"]) == pytest.approx(delta, rel=1e-5)
    assert only(rows, experiment="cityscapes_imagenet_baseline")["model"] == "mask_rcnn"
    assert "† fewer seeds have results than configured" in markdown
    # COCO: six stats; one DCL seed has a corrupt eval.json -> 1/2 seeds, no std.
    coco = only(rows, experiment="coco_imagenet_baseline")
    for stat, offset in zip(COCO_STATS, (0.0, 20.0, 5.0, -15.0, 2.0, 12.0)):
        assert float(coco[f"{stat}_mean"]) == pytest.approx(
            statistics.mean(v + offset for v in COCO_AP["coco_imagenet_baseline"]), rel=1e-5
        )
    coco_dcl = only(rows, experiment="coco_imagenet_dcl")
    assert (coco_dcl["seeds_with_results"], coco_dcl["AP_std"]) == ("1", "")
    assert "| DCL | 1/2† | **35.90** |" in markdown.split("### COCO, ImageNet initialisation")[1]


def test_main_table_published_and_paired_delta(paper):
    root, _ = paper
    rows = read_csv(root / "tables" / "main_results.csv")
    dcl = only(rows, experiment="cityscapes_imagenet_dcl")
    mean = statistics.mean(CS_AP["cityscapes_imagenet_dcl"])
    assert float(dcl["published"]) == 37.1
    assert float(dcl["published_diff"]) == pytest.approx(mean - 37.1, rel=1e-5)
    expected = paired_by_hand(CS_AP["cityscapes_imagenet_baseline"], CS_AP["cityscapes_imagenet_dcl"])
    got = [float(dcl[k]) for k in ("delta_mean", "delta_ci_low", "delta_ci_high", "delta_p")]
    assert got == pytest.approx(expected, rel=1e-5)
    assert dcl["delta_pairs"] == "3"
    # COCO init: baseline seed 2 missing -> 2 pairs (seeds 0 and 1).
    coco_init = only(rows, experiment="cityscapes_coco_dcl")
    expected = paired_by_hand(CS_AP["cityscapes_coco_baseline"][:2], CS_AP["cityscapes_coco_dcl"][:2])
    got = [float(coco_init[k]) for k in ("delta_mean", "delta_ci_low", "delta_ci_high", "delta_p")]
    assert got == pytest.approx(expected, rel=1e-5) and coco_init["delta_pairs"] == "2"
    # COCO: one pair only -> difference shown, CI and p n/a.
    coco = only(rows, experiment="coco_imagenet_dcl")
    assert float(coco["delta_mean"]) == pytest.approx(35.9 - 35.1, rel=1e-5)
    assert (coco["delta_ci_low"], coco["delta_p"], coco["delta_pairs"]) == ("", "", "1")
    markdown = (root / "tables" / "main_results.md").read_text()
    assert "| DCL − baseline | 1 pair | +0.80 | +0.80 |" in markdown and "| +0.80 |  | n/a | n/a |" in markdown
    low, high = expected[1], expected[2]
    assert f"[{low:+.2f}, {high:+.2f}]".replace("-", "−") in markdown
    assert "paired t-test" in markdown and "ttest_rel" in (root / "tables" / "main_results.tex").read_text().replace(
        "\\_", "_"
    )
    # Baseline rows carry no delta; the released row compares to the published number.
    assert only(rows, experiment="cityscapes_imagenet_baseline")["delta_mean"] == ""
    released = only(rows, experiment="released_cityscapes_imagenet_dcl")
    assert float(released["published_diff"]) == pytest.approx(RELEASED_AP - 37.1, rel=1e-4)


def test_dcl_vs_baseline_every_metric(paper):
    root, _ = paper
    rows = read_csv(root / "tables" / "dcl_vs_baseline.csv")
    row = only(rows, dcl_experiment="cityscapes_imagenet_dcl", metric="cityscapes.AP50")
    expected = paired_by_hand(CS_AP50["cityscapes_imagenet_baseline"], CS_AP50["cityscapes_imagenet_dcl"])
    got = [float(row[k]) for k in ("delta_mean", "delta_ci_low", "delta_ci_high", "delta_p")]
    assert got == pytest.approx(expected, rel=1e-5)
    assert row["paired_seeds"] == "0 1 2" and row["baseline_n"] == "3"
    assert {r["metric"] for r in rows if r["dcl_experiment"] == "coco_imagenet_dcl"} == {
        f"segm.{s}" for s in COCO_STATS
    }
    assert not [r for r in rows if r["dcl_experiment"].startswith("ablation")]
    # RefineMask + DCL is paired with the RefineMask baseline, never with Mask R-CNN's.
    row = only(rows, dcl_experiment="cityscapes_imagenet_refinemask_dcl", metric="cityscapes.AP")
    assert row["baseline_experiment"] == "cityscapes_imagenet_refinemask_baseline"
    assert (
        only(rows, dcl_experiment="cityscapes_imagenet_dcl", metric="cityscapes.AP")["baseline_experiment"]
        == "cityscapes_imagenet_baseline"
    )


def test_error_table_corrected_and_legacy_side_by_side(paper):
    root, _ = paper
    rows = read_csv(root / "tables" / "error_analysis.csv")
    for experiment, seeds in (
        ("cityscapes_imagenet_dcl", [0, 1, 2]),
        ("cityscapes_coco_baseline", [0, 1]),
        ("coco_imagenet_dcl", [0, 1]),
    ):
        row = only(rows, experiment=experiment)
        assert int(row["seeds_corrected"]) == len(seeds) == int(row["seeds_legacy"])
        for error_type in TYPES:
            for semantics, legacy in (("corrected", False), ("legacy", True)):
                values = [gains(experiment, s, legacy)[error_type] for s in seeds]
                assert float(row[f"{error_type}_{semantics}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-5)
                assert float(row[f"{error_type}_{semantics}_std"]) == pytest.approx(statistics.stdev(values), rel=1e-5)
    markdown = (root / "tables" / "error_analysis.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Model"))
    assert header == (
        "| Model | Seeds | AP | legacy (original tool) fFP | legacy (original tool) bFP "
        "| legacy (original tool) FN | legacy (original tool) fFP&bFP | corrected fFP | corrected bFP "
        "| corrected FN | corrected fFP&bFP |"
    )
    assert (
        "### Cityscapes" in markdown
        and "### COCO" in markdown
        and "GT files: legacy gt.json; corrected gt.json" in markdown
    )
    # The corrupt eval.json of coco_imagenet_dcl seed 1 does not hide its valid error analysis.
    fn = statistics.mean(gains("cityscapes_imagenet_baseline", s, False)["FN"] for s in range(3))
    fn_legacy = statistics.mean(gains("cityscapes_imagenet_baseline", s, True)["FN"] for s in range(3))
    # Cityscapes has RefineMask rows too: Mask R-CNN's are named.
    baseline_row = next(line for line in markdown.splitlines() if line.startswith("| Mask R-CNN, ImageNet | 3/3"))
    cells = [c.strip() for c in baseline_row.strip("|").split("|")]
    assert (cells[5], cells[9]) == (f"{fn_legacy:.2f}", f"{fn:.2f}")
    cityscapes = markdown.split("### Cityscapes")[1]
    assert cityscapes.index("| Mask R-CNN + DCL, ImageNet (released) |") < cityscapes.index("| RefineMask, ImageNet |")
    assert only(rows, experiment="cityscapes_imagenet_refinemask_dcl")["model"] == "refinemask"
    assert "| Baseline, ImageNet |" in markdown.split("### COCO")[1]  # Mask R-CNN only: not named
    # Main comparisons first, ablations last.
    order = [r["experiment"] for r in rows]
    assert order.index("coco_imagenet_dcl") < order.index("ablation_loss_weight_0.4")
    latex = (root / "tables" / "error_analysis.tex").read_text()
    assert r"\multicolumn{4}{c}{legacy (original tool)}" in latex and r"\cmidrule(lr){4-7}" in latex
    assert r"\cmidrule(lr){8-11}" in latex


def test_ablation_table(paper):
    root, _ = paper
    rows = read_csv(root / "tables" / "ablations.csv")
    assert [(r["parameter"], r["value"]) for r in rows] == [
        ("LOSS_WEIGHT", "0.4"),
        ("LOSS_WEIGHT", "2.0"),
        ("WITH_PROJ", "false"),
    ]
    for experiment, (_, _, values) in ABLATIONS.items():
        row = only(rows, experiment=experiment)
        mean, std = mean_std(values)
        assert float(row["mean"]) == pytest.approx(mean, rel=1e-5) and float(row["std"]) == pytest.approx(std, rel=1e-5)
        assert row["seeds_with_results"] == row["seeds_expected"] == "2"
    markdown = (root / "tables" / "ablations.md").read_text()
    with_proj = markdown.split("### WITH_PROJ")[1]
    assert "| off | 2/2 | 36.20 ± 0.14 |" in with_proj
    # The baseline (no DCL) as the reference, the best value in bold.
    assert "| no DCL (baseline) | 3/3 | 35.57 ± 0.55 |" in with_proj
    assert "| 2 | 2/2 | **36.30 ± 0.42** |" in markdown.split("### LOSS_WEIGHT")[1]


def test_inventory_lists_every_expected_run(paper):
    root, _ = paper
    expected_runs = json.loads((root / "experiments.json").read_text())["runs"]
    rows = read_csv(root / "tables" / "run_inventory.csv")
    assert sorted((r["experiment"], int(r["seed"])) for r in rows) == sorted(
        (r["experiment"], r["seed"]) for r in expected_runs
    )
    missing = only(rows, experiment="cityscapes_coco_baseline", seed="2")
    assert missing["status"] == "missing" and "no run folder" in missing["reason"]
    corrupt = only(rows, experiment="coco_imagenet_dcl", seed="1")
    assert corrupt["status"] == "failed"
    assert "eval.json" in corrupt["reason"] and "truncated" in corrupt["reason"]
    assert str(root) not in corrupt["reason"]  # no machine-specific paths in the outputs
    done = only(rows, experiment="cityscapes_imagenet_dcl", seed="0")
    assert (done["status"], done["reason"], done["iteration"], done["max_iter"]) == ("finished", "", "100", "100")
    assert (done["wall_time_s"], done["gpu_type"], done["gpu_count"]) == ("5400", "NVIDIA A100", "4")
    assert float(done["gpu_hours"]) == 1.5 * 4
    markdown = (root / "tables" / "run_inventory.md").read_text()
    assert (
        "| cityscapes_imagenet_dcl | 0 | train | finished |  | 100/100 | 1:30:00 | 4 × NVIDIA A100 | 6.0 |" in markdown
    )
    used = sum(float(r["gpu_hours"]) for r in rows if r["gpu_hours"])
    assert f"{used:.1f} GPU-hours in all" in markdown
    released = only(rows, experiment="released_cityscapes_imagenet_dcl")
    assert released["status"] == "finished"  # evaluation only: no run.json or metrics.json needed


def test_reproduction_verdicts_and_readme(paper):
    root, result = paper
    rows = read_csv(root / "tables" / "reproduction.csv")

    def verdict(experiment, metric):
        return only(rows, experiment=experiment, metric=metric)["verdict"]

    # By hand: |mean - published| against 2 sample stds.
    mean, std = mean_std(CS_AP["cityscapes_imagenet_dcl"])
    assert abs(mean - 37.1) <= 2 * std
    assert verdict("cityscapes_imagenet_dcl", "cityscapes.AP") == "reproduced"
    mean, std = mean_std(CS_AP["cityscapes_coco_dcl"])
    assert abs(mean - 38.6) > 2 * std
    assert verdict("cityscapes_coco_dcl", "cityscapes.AP") == "not reproduced"
    assert verdict("cityscapes_coco_baseline", "cityscapes.AP") == "cannot be judged"  # 2/3 seeds
    assert verdict("coco_imagenet_dcl", "segm.AP") == "cannot be judged"  # 1/2 seeds (corrupt one)
    mean, std = mean_std(COCO_AP["coco_imagenet_baseline"])
    assert abs(mean - 35.2) <= 2 * std and verdict("coco_imagenet_baseline", "segm.AP") == "reproduced"
    box = only(rows, experiment="coco_imagenet_baseline", metric="bbox.AP")
    assert float(box["mean"]) == pytest.approx(statistics.mean(COCO_BOX_AP), rel=1e-5)
    assert (
        abs(RELEASED_AP - 37.1) <= 0.05 and verdict("released_cityscapes_imagenet_dcl", "cityscapes.AP") == "reproduced"
    )
    # RefineMask numbers are judged against the RefineMask experiments only (and Mask R-CNN's
    # against Mask R-CNN's: `only` above found one row each).
    assert {r["experiment"] for r in rows if r["detector"] == "RefineMask R50-FPN"} == set(REFINEMASK_AP)
    mean, std = mean_std(REFINEMASK_AP["cityscapes_imagenet_refinemask_dcl"])
    assert (
        abs(mean - 39.3) <= 2 * std and verdict("cityscapes_imagenet_refinemask_dcl", "cityscapes.AP") == "reproduced"
    )
    # RefineMask's own baseline: judged on COCO-style AP, the metric it was published in.
    mean, std = mean_std([ap + 1.5 for ap in REFINEMASK_AP["cityscapes_imagenet_refinemask_baseline"]])
    assert abs(mean - 37.6) <= 2 * std
    assert verdict("cityscapes_imagenet_refinemask_baseline", "segm.AP") == "reproduced"
    readme = (root / "README.md").read_text()
    assert "29 runs expected: 27 finished, 0 running, 0 incomplete, 1 failed, 1 missing." in readme
    assert "|mean − published| ≤ 2 ×" in readme
    section = readme.split("### Not reproduced (1)")[1].split("###")[0]
    assert "`cityscapes_coco_dcl`" in section and "published 38.6" in section
    assert "### Cannot be judged yet (2)" in readme and "### Reproduced (6)" in readme
    assert "`coco_imagenet_dcl` seed 1: **failed**: eval.json" in readme
    assert "Listed, but not reproducible" not in readme  # every published number is reproducible now
    assert "no data" not in readme  # every figure has data here


def test_latex_tables_are_balanced_booktabs(paper):
    root, _ = paper
    for name in TABLES:
        text = (root / "tables" / f"{name}.tex").read_text()
        check_latex(text, name)


def check_latex(text: str, name: str) -> None:
    """Each float of the file (several for tables in parts) on its own."""
    floats = re.split(r"(?m)^(?=\\begin\{table\*?\}|\\begingroup)", text)
    assert len(floats) > 1, name
    for index, part in enumerate(floats[1:]):
        _check_latex_float(part, f"{name}[{index}]")


def _check_latex_float(text: str, name: str) -> None:
    body = [line for line in text.splitlines() if not line.startswith("%")]
    source = "\n".join(body)
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", source):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"{name}: unbalanced \\end{{{env}}}"
    assert not stack, f"{name}: unclosed {stack}"
    assert source.count("{") - source.count(r"\{") == source.count("}") - source.count(r"\}"), name
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in source, (name, rule)
    for line in body:
        # % only as a line-end comment (after a brace); _ and # never unescaped.
        assert not re.search(r"(?<!\\)[_#]", line) and not re.search(r"(?<!\\)%.", line), f"{name}: {line}"
    spec = re.findall(
        r"[lrc]|p\{[^}]*\}", re.search(r"\\begin\{(?:tabular|longtable)\}\{((?:[lrc]|p\{[^}]*\})+)\}", source).group(1)
    )
    rows = [line for line in body if line.endswith(r"\\") and not line.startswith(r"\caption")]
    assert rows, name
    for line in rows:
        cells = re.split(r"(?<!\\)&", line[:-2])
        spans = sum(int(m) for m in re.findall(r"\\multicolumn\{(\d+)\}", line)) - len(
            re.findall(r"\\multicolumn", line)
        )
        assert len(cells) + spans == len(spec), f"{name}: {len(cells) + spans} cells, {len(spec)} columns: {line}"


def test_latex_compiles_and_fits_the_page_without_resizing(paper, tmp_path):
    """Every table compiles with pdflatex and fits a BMVC-wide text block (455 pt, a table* or a
    single-column page) with no overfull box; no table is scaled to fit."""
    engine = shutil.which("pdflatex")
    if engine is None:
        if os.environ.get("CI"):
            pytest.fail("pdflatex is missing under CI: `make test-all` installs texlive-latex-base/-recommended")
        pytest.skip(
            "pdflatex not installed (`make test-all` installs it where it can: root and apt-get); "
            "structure is still checked by test_latex_tables_are_balanced_booktabs"
        )
    root, _ = paper
    inputs_tex = "\n".join(f"\\input{{{(root / 'tables' / name).as_posix()}}}" for name in TABLES)
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\\usepackage[a4paper,textwidth=455pt]{geometry}"
        "\\usepackage{booktabs}\\usepackage{longtable}\n"
        "\\begin{document}\n" + inputs_tex + "\n\\end{document}\n"
    )
    done = subprocess.run(
        [engine, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, re.findall(r"Overfull .*", log)
    for name in TABLES:
        assert "resizebox" not in (root / "tables" / f"{name}.tex").read_text()


def test_figures_are_real_images(paper):
    from PIL import Image

    root, result = paper
    assert result.figure_reasons == {name: "" for name in FIGURES}
    for name in FIGURES:
        with Image.open(root / "figures" / f"{name}.png") as image:
            image.load()
            assert image.width > 500 and image.height > 300
            # Not blank: a real plot has many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 50


def test_a_report_reads_experiments_json_once(paper, monkeypatch):
    root, _ = paper
    reads = []
    original = dcl_runs.read_json
    monkeypatch.setattr(
        dcl_runs, "read_json", lambda path, *a, **k: reads.append(Path(path).name) or original(path, *a, **k)
    )
    build_report(root, published_path=PUBLISHED)
    assert reads.count("experiments.json") == 1


def test_rerun_without_changes_is_byte_identical(paper):
    root, _ = paper
    before = tree_hashes(root)
    build_report(root, published_path=PUBLISHED)
    assert tree_hashes(root) == before
    for path in [*root.glob("tables/*"), root / "README.md"]:
        assert str(root) not in path.read_text(), path  # no absolute paths: identical across machines too


def test_one_pdf_has_a_section_per_table_and_figure_with_its_caption(paper):
    """report.pdf, read back with pypdf: its bookmarks are the summary, then each table and each
    figure in the report's order, each section on pages of its own, showing the caption."""
    from pypdf import PdfReader

    from dcl.report.document import figure_caption

    root, result = paper
    if result.pdf is None:
        if os.environ.get("CI"):
            pytest.fail("pdflatex is missing under CI: `make test-all` installs texlive-latex-base/-recommended")
        pytest.skip("pdflatex not installed: report.pdf is not written (report.tex is)")
    reader = PdfReader(result.pdf)
    sections = [item for item in reader.outline if not isinstance(item, list)]
    table_titles = [(root / "tables" / f"{n}.md").read_text().splitlines()[0].removeprefix("## ") for n in TABLES]
    figure_titles = [figure_caption(name)[0] for name in FIGURES]
    assert [s.title for s in sections] == ["Summary", *table_titles, *figure_titles]
    pages = [reader.get_destination_page_number(s) for s in sections]
    assert pages == sorted(pages) and len(set(pages[1:])) == len(pages) - 1  # a page (or more) each
    text = [" ".join(page.extract_text().split()) for page in reader.pages]
    for title, page in zip(figure_titles, pages[1 + len(TABLES) :]):
        assert f"{title}." in text[page]  # the figure's caption under it
    summary = " ".join(text[:2])
    assert "Runs: 27 finished" in summary and "Published numbers: 6 reproduced" in summary


def test_html_tables_for_the_snakemake_report(paper):
    from html.parser import HTMLParser

    root, _ = paper

    class Counter(HTMLParser):
        rows = 0

        def handle_starttag(self, tag, attrs):
            self.rows += tag == "tr"

    counter = Counter()
    counter.feed((root / "tables" / "run_inventory.html").read_text())
    assert counter.rows == 1 + 29  # header + one per expected run


# ----------------------------------------------------------------------------- bad input
def expected_run(kind="train", method="baseline", experiment="exp", seed=0, group="main"):
    """A Cityscapes (ImageNet init) run experiments.json lists."""
    return dcl_runs.ExpectedRun(
        experiment=experiment,
        seed=seed,
        kind=kind,
        dataset="cityscapes",
        init="imagenet",
        method=method,
        group=group,
        ablation=None,
        metric="cityscapes.AP",
        run_dir=f"runs/{experiment}/seed{seed}",
    )


def published_entry(value):
    """A published Cityscapes AP of a DCL model (ImageNet init)."""
    return dcl_published.PublishedEntry(
        dataset="cityscapes",
        init="imagenet",
        method="dcl",
        detector="d",
        metric="cityscapes.AP",
        value=value,
        source="s",
        reproducible=True,
        note="",
        index=0,
    )


GOOD_EVAL = {"cityscapes": {"AP": 30.0, "AP50": 55.0}}


def good_files():
    return {
        "run.json": json.dumps(finished_run_json(0)),
        "metrics.json": metrics_lines("baseline", 0),
        "eval.json": json.dumps(GOOD_EVAL),
        "errors.json": json.dumps(errors_record({"FN": 5.0}, False)),
        "errors_legacy.json": json.dumps(errors_record({"FN": 7.0}, True)),
    }


# (files changed, expected status, words the reason must contain, is eval.json used by the tables)
@pytest.mark.parametrize(
    "change, status, words, eval_used",
    [
        ({}, "finished", [], True),
        ({"eval.json": '{"cityscapes": {"AP": 3'}, "failed", ["eval.json", "invalid JSON", "truncated"], False),
        (
            {"eval.json": json.dumps({"cityscapes": {"AP": "30.0", "AP50": 55.0}})},
            "failed",
            ["cityscapes.AP", "must be a number", "str"],
            False,
        ),
        ({"eval.json": json.dumps({"segm": {}})}, "failed", ["no 'cityscapes' section"], False),
        ({"eval.json": json.dumps({"cityscapes": {"AP": None, "AP50": 1.0}})}, "failed", ["headline", "null"], False),
        ({"eval.json": None}, "incomplete", ["not written yet: eval.json"], False),
        # Later steps broken or missing: the run is flagged, its valid AP still counts (tables show n).
        ({"errors_legacy.json": None}, "incomplete", ["not written yet: errors_legacy.json"], True),
        (
            {"errors.json": json.dumps(errors_record({"FN": 5.0}, True))},
            "failed",
            ["errors.json", "legacy", "swapped"],
            True,
        ),
        (
            {"errors.json": json.dumps({"baseline": {"AP": 1.0}, "delta": {"FN": {"AP": "x"}}, "types": ["FN"]})},
            "failed",
            ["delta.FN.AP"],
            True,
        ),
        # A damaged metrics.json line (a torn append) is skipped with a warning; the run still counts.
        (
            {"metrics.json": '{"iteration": 1, "total_loss": 1.0}\n{"iteration": 2, "total'},
            "finished",
            ["metrics.json: skipped unreadable line 2", "truncated"],
            True,
        ),
        (
            {"metrics.json": '{"iteration": 1, "total_loss": "high"}\n'},
            "finished",
            ["total_loss", "must be a number"],
            True,
        ),
        # Training not (known to be) complete: a stale eval.json is never used.
        (
            {"run.json": json.dumps({"status": "running", "iteration": 50, "max_iter": 100})},
            "running",
            ["50/100"],
            False,
        ),
        (
            {"run.json": json.dumps({"status": "interrupted", "iteration": 50, "max_iter": 100})},
            "incomplete",
            ["interrupted", "50/100"],
            False,
        ),
        (
            {"run.json": json.dumps({"status": "failed", "exit_code": 3, "iteration": 5, "max_iter": 100})},
            "failed",
            ["training failed", "exit_code 3"],
            False,
        ),
        ({"run.json": json.dumps(finished_run_json(0, iteration=90))}, "incomplete", ["90/100"], False),
        (
            {"run.json": json.dumps(finished_run_json(0, iteration="100"))},
            "failed",
            ["'iteration'", "integer", "str"],
            False,
        ),
        ({"run.json": json.dumps(finished_run_json(0, gpus={"count": "4"}))}, "failed", ["gpus.count"], False),
        ({"run.json": json.dumps(finished_run_json(1))}, "failed", ["seed is 1"], False),
        ({"run.json": "[1, 2"}, "failed", ["run.json", "invalid JSON"], False),
        ({"run.json": None}, "incomplete", ["not written yet: run.json"], False),
    ],
)
def test_bad_run_files_become_a_status_with_a_reason(tmp_path, change, status, words, eval_used):
    files = {**good_files(), **change}
    folder = tmp_path / "runs" / "exp" / "seed0"
    folder.mkdir(parents=True)
    for name, content in files.items():
        if content is not None:
            (folder / name).write_text(content)
    result = dcl_runs.load_run(tmp_path, expected_run())
    assert result.status == status, result.reason
    for word in words:
        assert word in result.reason
    assert str(tmp_path) not in result.reason
    assert (result.eval is not None) == eval_used


def test_stale_eval_of_a_failed_training_is_not_used(tmp_path):
    folder = tmp_path / "runs" / "exp" / "seed0"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "failed", "exit_code": 1}))
    (folder / "eval.json").write_text(json.dumps(GOOD_EVAL))
    result = dcl_runs.load_run(tmp_path, expected_run())
    assert result.status == "failed" and result.eval is None


def test_missing_and_empty_run_folders(tmp_path):
    assert dcl_runs.load_run(tmp_path, expected_run()).status == "missing"
    (tmp_path / "runs" / "exp" / "seed0").mkdir(parents=True)
    result = dcl_runs.load_run(tmp_path, expected_run())
    assert (result.status, result.reason) == ("missing", "run folder has no result files yet")


def test_missing_experiments_json_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 1
    message = capsys.readouterr().err
    assert "experiments file not found" in message and str(tmp_path / "experiments.json") in message
    assert not (tmp_path / "tables").exists()


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda r: r.update(seed="0"), ["runs[1]", "'seed'", "integer"]),
        (lambda r: r.update(method="contrastive"), ["runs[1]", "'method'", "baseline, dcl"]),
        (lambda r: r.update(metric="segm.AR1"), ["runs[1]", "unknown metric 'segm.AR1'"]),
        (lambda r: r.update(group="ablation"), ["runs[1]", "needs an 'ablation' object"]),
        (lambda r: r.update(dataset="coco"), ["runs[1]", "disagree"]),
        (lambda r: r.update(seed=0), ["runs[1]", "listed twice"]),
    ],
)
def test_bad_experiments_json_names_record_and_field(tmp_path, mutate, words):
    runs = [
        run_record("exp", 0, "cityscapes", "imagenet", "baseline"),
        run_record("exp", 1, "cityscapes", "imagenet", "baseline"),
    ]
    mutate(runs[1])
    (tmp_path / "experiments.json").write_text(json.dumps({"preset": "x", "runs": runs}))
    with pytest.raises(InputError) as error:
        dcl_runs.load_experiments(tmp_path / "experiments.json")
    for word in words:
        assert word in str(error.value)
    (tmp_path / "experiments.json").write_text('{"preset": "x", "runs": [')
    with pytest.raises(InputError, match="truncated"):
        dcl_runs.load_experiments(tmp_path / "experiments.json")


def test_bad_published_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "published.yaml"
    path.write_text(
        "published:\n  - {dataset: coco, init: imagenet, method: dcl, detector: x, metric: segm.AP, value: high, source: s}\n"
    )
    with pytest.raises(InputError, match=r"published\[0\]: 'value' must be a number"):
        dcl_published.load_published(path)
    with pytest.raises(InputError, match="not found"):
        dcl_published.load_published(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- published.yaml data
def test_published_yaml_holds_the_papers_numbers():
    entries = dcl_published.load_published(PUBLISHED)
    table = {(*e.identity, e.metric): (e.value, e.reproducible) for e in entries}
    assert table == {
        ("cityscapes", "imagenet", "dcl", "mask_rcnn", "R50-FPN", None, "cityscapes.AP"): (37.1, True),
        ("cityscapes", "coco", "dcl", "mask_rcnn", "R50-FPN", None, "cityscapes.AP"): (38.6, True),
        ("cityscapes", "imagenet", "dcl", "refinemask", "R50-FPN", None, "cityscapes.AP"): (39.3, True),
        ("cityscapes", "imagenet", "baseline", "refinemask", "R50-FPN", None, "segm.AP"): (37.6, True),
        ("coco", "imagenet", "dcl", "mask_rcnn", "R50-FPN", "1x", "segm.AP"): (35.6, True),
        ("coco", "imagenet", "baseline", "mask_rcnn", "R50-FPN", "1x", "segm.AP"): (35.2, True),
        ("coco", "imagenet", "baseline", "mask_rcnn", "R50-FPN", "1x", "bbox.AP"): (38.6, True),
        # detectron2 MODEL_ZOO.md, COCO Instance Segmentation Baselines with Mask R-CNN.
        ("coco", "imagenet", "baseline", "mask_rcnn", "R50-FPN", "3x", "segm.AP"): (37.2, True),
        ("coco", "imagenet", "baseline", "mask_rcnn", "R50-FPN", "3x", "bbox.AP"): (41.0, True),
        ("coco", "imagenet", "baseline", "mask_rcnn", "R101-FPN", "3x", "segm.AP"): (38.6, True),
        ("coco", "imagenet", "baseline", "mask_rcnn", "R101-FPN", "3x", "bbox.AP"): (42.9, True),
        ("cityscapes", "coco", "baseline", "mask_rcnn", "R50-FPN", None, "cityscapes.AP"): (36.5, True),
    }
    assert all(e.source for e in entries) and all(e.reproducible for e in entries)
    assert {e.model for e in entries if e.detector.startswith("RefineMask")} == {"refinemask"}
    assert {e.model for e in entries if e.detector.startswith("Mask")} == {"mask_rcnn"}
    # 41.0 is published to 0.1: the float's lost trailing zero must not widen it to +-0.5.
    assert {e.tolerance for e in entries} == {0.05}


# ----------------------------------------------------------------------------- sparse tree: no-data figures
def test_no_data_figures_are_labelled_placeholders_and_reported(tmp_path, monkeypatch, capsys):
    """A toy matrix with nothing finished: every output still exists; figures say "No data" and why;
    the default published.yaml is found from another working directory."""
    runs = [
        run_record("toy_coco_baseline", 0, "toy_coco", "scratch", "baseline"),
        run_record("toy_coco_dcl", 0, "toy_coco", "scratch", "dcl"),
    ]
    results = tmp_path / "results" / "toy"
    results.mkdir(parents=True)
    (results / "experiments.json").write_text(json.dumps({"preset": "toy", "runs": runs}))
    write_run(results, runs[1], run_json={"status": "running", "iteration": 3, "max_iter": 300}, metrics=None)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "results/toy"]) == 0
    out = capsys.readouterr().out
    for name in FIGURES:
        assert f"figure {name}: no data" in out
        assert (results / "figures" / f"{name}.png").stat().st_size > 0
    readme = (results / "README.md").read_text()
    assert "2 runs expected: 0 finished, 1 running, 0 incomplete, 0 failed, 1 missing." in readme
    assert "no ablation runs in experiments.json" in readme and "**no data**" in readme
    assert f"### Not in this experiment matrix ({len(dcl_published.load_published(PUBLISHED))})" in readme
    assert "*No data: no ablation runs in experiments.json*" in (results / "tables" / "ablations.md").read_text()
    check_latex((results / "tables" / "ablations.tex").read_text(), "empty ablations")
    assert read_csv(results / "tables" / "ablations.csv") == []


# ----------------------------------------------------------------------------- Snakemake report
def test_captions_are_valid_restructuredtext():
    from docutils.core import publish_parts
    from jinja2 import Template

    names = {p.stem for p in CAPTIONS.glob("*.rst")}
    assert names == {"workflow"} | {f"table_{t}" for t in TABLES} | {f"figure_{f}" for f in FIGURES}
    for path in CAPTIONS.glob("*.rst"):
        text = Template(path.read_text()).render()  # Snakemake renders captions with Jinja first
        # halt_level 2: any docutils warning (bad markup, undefined |substitution|) raises.
        publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 5})


@pytest.mark.e2e
def test_snakemake_html_report_with_captions(paper, tmp_path):
    source, _ = paper
    workdir = tmp_path / "wf"
    shutil.copytree(source, workdir / "res", ignore=shutil.ignore_patterns("tables", "figures", "README.md"))
    outputs = [f'report("res/tables/{t}.html", caption="{CAPTIONS}/table_{t}.rst", category="Tables")' for t in TABLES]
    outputs += [
        f'report("res/figures/{f}.png", caption="{CAPTIONS}/figure_{f}.rst", category="Figures")' for f in FIGURES
    ]
    (workdir / "Snakefile").write_text(
        f'report: "{CAPTIONS}/workflow.rst"\n'
        "rule report:\n"
        '    input: "res/experiments.json"\n'
        f'    output: {", ".join(outputs)}, "res/README.md"\n'
        f'    shell: "{sys.executable} -m dcl report res --published {PUBLISHED}"\n'
    )
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "1"]
    subprocess.run([*snakemake, "--quiet"], cwd=workdir, check=True, capture_output=True, timeout=300)
    done = subprocess.run(
        [*snakemake, "--report", "report.html"], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    assert "System Message" not in html  # docutils errors would be rendered into the captions
    for phrase in ("scipy.stats.ttest_rel", "dominant error", "plausible draw", "Run inventory", "white diamond"):
        assert phrase in html, phrase
    assert tree_hashes(workdir / "res") == tree_hashes(source)  # the same inputs give the same files


def test_garbage_in_metrics_json_is_skipped_and_the_rest_is_read(tmp_path):
    files = good_files()
    lines = files["metrics.json"].splitlines()
    files["metrics.json"] = "\n".join(lines[:1] + ["\x00\xff garbage {"] + lines[1:]) + "\n"
    folder = tmp_path / "runs" / "exp" / "seed0"
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_text(content)
    result = dcl_runs.load_run(tmp_path, expected_run())
    assert result.status == "finished" and result.eval is not None
    assert result.warnings == ["metrics.json: skipped unreadable line 2: invalid JSON: Expecting value"]
    drawn = set(dcl_runs.TRAINING_KEYS) | set(dcl_runs.EVAL_KEYS)
    assert [p["iteration"] for p in result.metrics] == [
        json.loads(line)["iteration"] for line in lines if drawn & set(json.loads(line))
    ]


@pytest.mark.parametrize("run_dir", ["../../../../etc", "/etc", "runs/../../x"])
def test_run_dirs_outside_the_results_tree_are_refused(tmp_path, run_dir):
    path = tmp_path / "experiments.json"
    record = {**run_record("exp", 0, "cityscapes", "imagenet", "baseline"), "run_dir": run_dir}
    path.write_text(json.dumps({"preset": "p", "runs": [record]}))
    message = rf"runs\[0\]: 'run_dir' {re.escape(run_dir)} must be a relative path inside the results directory"
    with pytest.raises(InputError, match=message):
        dcl_runs.load_experiments(path)
    result = subprocess.run(
        [sys.executable, "-m", "dcl", "report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr and re.search(message, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments.json"]


# ----------------------------------------------------------------------------- validation AP over training
def test_training_curves_show_the_periodic_evaluation_ap(tmp_path):
    """metrics.json evaluation lines (detectron2's EvalHook, TEST.EVAL_PERIOD) become a validation-AP
    panel: per experiment the mean over seeds at each evaluated iteration; on Cityscapes the
    official AP when it is logged, else segm/AP."""
    from dcl.report import analysis, figures

    runs = [run_record("coco_imagenet_baseline", s, "coco", "imagenet", "baseline") for s in (0, 1)]
    runs += [run_record("cityscapes_imagenet_dcl", 0, "cityscapes", "imagenet", "dcl")]
    ap = {
        ("coco_imagenet_baseline", 0): {49: 10.0, 99: 20.0},
        ("coco_imagenet_baseline", 1): {49: 12.0, 99: 23.0},
        ("cityscapes_imagenet_dcl", 0): {49: 15.0, 99: 25.0},
    }
    for record in runs:
        lines = metrics_lines(record["method"], record["seed"]).splitlines()[:-1]  # drop its eval line
        for iteration, value in ap[(record["experiment"], record["seed"])].items():
            point = {"iteration": iteration, "segm/AP": value, "segm/AP50": value + 20}
            if record["dataset"] == "cityscapes":
                point["cityscapes/AP"] = value - 5  # the official metric, preferred over segm/AP
            lines.append(json.dumps(point))
        write_run(tmp_path, record, metrics="\n".join(lines) + "\n")
    results = [
        dcl_runs.load_run(tmp_path, dcl_runs.load_experiments(write_experiments(tmp_path, runs))[1][i])
        for i in range(len(runs))
    ]
    figure, reason = figures.training_curves(analysis.experiment_stats(results))
    assert reason == ""
    columns = len(dcl_runs.TRAINING_KEYS) + 1
    panels = [a for a in figure.axes if a.get_subplotspec() is not None]
    assert panels[columns - 1].get_title() == "validation AP"
    drawn = {}
    for row in range(len(panels) // columns):
        dataset = panels[row * columns].get_ylabel().split("\n")[0]
        for line in panels[row * columns + columns - 1].get_lines():
            drawn[(dataset, line.get_label().split(",")[0])] = (list(line.get_xdata()), list(line.get_ydata()))
    assert drawn == {("COCO", "Baseline"): ([49, 99], [11.0, 21.5]), ("Cityscapes", "DCL"): ([49, 99], [10.0, 20.0])}


def test_training_curve_iteration_ticks_read_at_the_papers_schedules():
    """COCO's 90k and Cityscapes' 24k iterations: three ticks in thousands, the schedule's end
    among them, the same on every panel of a dataset (the validation AP's "25000 50000 75000"
    overlapped in a 1.3-inch panel, and so did "30k60k90k")."""
    from dcl.report import analysis, figures

    results = []
    for dataset, max_iter in (("cityscapes", 24000), ("coco", 90000)):
        spec = dcl_runs.ExpectedRun(**{**vars(expected_run(experiment=dataset)), "dataset": dataset})
        # As detectron2 logs them: the last at max_iter - 1.
        points = [{"iteration": i, "total_loss": 1.0, "lr": 0.02} for i in range(max_iter - 1, 0, -1000)][::-1]
        points += [{"iteration": i, "segm/AP": 30.0, "cityscapes/AP": 30.0} for i in range(4999, max_iter, 5000)]
        results.append(dcl_runs.RunResult(expected=spec, status="finished", metrics=points))
    figure, _ = figures.training_curves(analysis.experiment_stats(results))
    panels = [a for a in figure.axes if a.get_subplotspec() is not None]
    columns = len(dcl_runs.TRAINING_KEYS) + 1
    for row, ticks in enumerate((["0", "12k", "24k"], ["0", "45k", "90k"])):
        for axes in panels[row * columns : (row + 1) * columns]:
            formatter = axes.xaxis.get_major_formatter()
            assert [formatter(t, i) for i, t in enumerate(axes.get_xticks())] == ticks, axes.get_title()


def write_experiments(root, runs):
    path = root / "experiments.json"
    path.write_text(json.dumps({"preset": "t", "runs": runs}))
    return path


def _coco_occ_tree(root: Path, used: bool) -> None:
    runs = []
    for method, base in (("baseline", 30.0), ("dcl", 31.0)):
        for seed in (0, 1):
            record = run_record(f"coco_{method}", seed, "coco", "imagenet", method)
            runs.append(record)
            if not used:
                write_run(
                    root,
                    record,
                    eval_json={"segm": coco_section(base + seed)},
                    errors=errors_record(gains(method, seed, False), False),
                    legacy=errors_record(gains(method, seed, True), True),
                )
                continue
            write_run(
                root,
                record,
                eval_json={"segm": coco_section(base + seed)},
                errors=errors_record(gains(method, seed, False), False),
                legacy=errors_record(gains(method, seed, True), True),
            )
            folder = root / record["run_dir"]
            (folder / "eval_occ.json").write_text(json.dumps({"segm": coco_section(base - 5 + 0.5 * seed)}))
            occ_errors = errors_record({"fFP": 3.0 + seed, "bFP": 1.0, "FN": 8.0}, False)
            occ_errors["gt"] = "datasets/coco/instances_occ2017_new.json"
            (folder / "errors_occ.json").write_text(json.dumps(occ_errors))
            occ_legacy = errors_record({"fFP": 3.5 + seed, "bFP": 1.0, "FN": 11.0}, True)
            occ_legacy["gt"] = "datasets/coco/instances_occ2017_new.json"
            (folder / "errors_legacy_occ.json").write_text(json.dumps(occ_legacy))
    occlusion = {"path": "datasets/coco/instances_occ2017_new.json", "used": used}
    (root / "experiments.json").write_text(json.dumps({"preset": "occ", "occlusion_subset": occlusion, "runs": runs}))


def test_coco_occ_column_tables_and_note(tmp_path):
    used, absent = tmp_path / "used", tmp_path / "absent"
    _coco_occ_tree(used, True)
    _coco_occ_tree(absent, False)
    build_report(used, published_path=PUBLISHED)
    build_report(absent, published_path=PUBLISHED)
    main = (used / "tables" / "main_results.md").read_text()
    header = next(line for line in main.splitlines() if line.startswith("| Method"))
    assert "| OCC AP |" in header and "OCC AP" not in (absent / "tables" / "main_results.md").read_text()
    occ = [statistics.mean([25.0, 25.5]), statistics.mean([26.0, 26.5])]
    assert f"{occ[0]:.2f} ± {statistics.stdev([25.0, 25.5]):.2f}" in main
    assert "| DCL − baseline | 2 pairs |" in main and f"+{occ[1] - occ[0]:.2f}" in main
    errors = (used / "tables" / "error_analysis.md").read_text()
    section = errors.split("### COCO, occlusion subset (COCO-OCC)")[1]
    assert "GT files: legacy instances_occ2017_new.json; corrected instances_occ2017_new.json" in section
    baseline = next(line for line in section.splitlines() if line.startswith("| Baseline, ImageNet"))
    cells = [c.strip() for c in baseline.strip("|").split("|")]
    assert cells[3:6] == [f"{statistics.mean([3.5, 4.5]):.2f}", "1.00", "11.00"]  # legacy fFP, bFP, FN
    assert "### COCO, occlusion subset" not in (absent / "tables" / "error_analysis.md").read_text()
    assert "also evaluated and error-analysed on the occlusion subset" in (used / "README.md").read_text()
    note = [line for line in (absent / "README.md").read_text().splitlines() if "COCO-OCC" in line]
    assert len(note) == 1 and note[0].startswith("Note: no occlusion subset (COCO-OCC) at `datasets/coco/")


# ----------------------------------------------------------------------------- the verdict at its boundaries
def judged(values, published, kind="train", unfinished=()):
    """The reproduction row of a synthetic experiment (one finished run per value, then one run per
    status in ``unfinished``) against ``published``."""
    from dcl.report.analysis import experiment_stats, reproduction

    results = []
    for seed, value in enumerate([*values, *unfinished]):
        spec = expected_run(kind, "dcl", "x", seed, "released" if kind == "released" else "main")
        if seed < len(values):
            results.append(dcl_runs.RunResult(expected=spec, status="finished", eval={"cityscapes.AP": value}))
        else:
            results.append(dcl_runs.RunResult(expected=spec, status=value))
    (row,) = reproduction([published_entry(published)], experiment_stats(results))
    return row


def judge(values, published, kind="train"):
    """The verdict of :func:`judged`."""
    return judged(values, published, kind).verdict


def test_verdict_is_two_sample_stds_exactly():
    # Seeds 36 and 38: sample std sqrt(2) (limit 2.828), population std 1 (limit 2), so a
    # pstdev, 1-std or 3-std rule gives a different verdict at one of these published values.
    values = [36.0, 38.0]
    limit = 2 * statistics.stdev(values)
    assert limit == pytest.approx(2 * math.sqrt(2))
    for offset, expected in (
        (limit - 0.005, "reproduced"),
        (limit + 0.005, "not reproduced"),
        (-(limit - 0.005), "reproduced"),
        (-(limit + 0.005), "not reproduced"),
        (2.5, "reproduced"),
        (1.2, "reproduced"),
        (3.5, "not reproduced"),
    ):
        assert judge(values, 37.0 + offset) == expected, offset


def test_released_verdict_is_half_a_published_digit():
    for value, expected in (
        (37.149, "reproduced"),
        (37.051, "reproduced"),
        (37.152, "not reproduced"),
        (37.048, "not reproduced"),
        (37.1, "reproduced"),
    ):
        assert judge([value], 37.1, kind="released") == expected, value
    assert judge([37.45], 37.0, kind="released") == "reproduced"  # an integer: +-0.5
    assert judge([37.55], 37.0, kind="released") == "not reproduced"
    assert judge([37.12], 37.12, kind="released") == "reproduced"
    assert judge([37.126], 37.12, kind="released") == "not reproduced"  # 0.01 precision: +-0.005


def test_verdict_reasons_state_the_rule_that_decided():
    # The reason is the summary table's explanation of the verdict: its comparison sign must follow it.
    assert judged([37.12], 37.1, kind="released").reason == "|value − published| = 0.02 ≤ 0.05 (published precision)"
    assert judged([37.2], 37.1, kind="released").reason == "|value − published| = 0.10 > 0.05 (published precision)"
    assert judged([36.0, 38.0], 37.5).reason == "|mean − published| = 0.50 ≤ 2 std = 2.83"
    assert judged([36.0, 38.0], 40.0).reason == "|mean − published| = 3.00 > 2 std = 2.83"
    waiting = judged([36.0], 37.0, unfinished=("running", "failed"))
    assert waiting.verdict == "cannot be judged"
    assert waiting.reason == "1/3 seeds with results; waiting for seed 1 (running), 2 (failed)"


def test_paired_statistics_differ_from_the_plausible_wrong_formulas():
    # n = 3 pairs: t quantile with df 2 (4.303) vs df 3 (3.182) vs z (1.960); p two-sided vs one.
    baseline, dcl = [35.0, 35.6, 36.1], [36.4, 37.3, 36.9]
    d = [b - a for a, b in zip(baseline, dcl)]
    got = paired_difference(dict(enumerate(baseline)), dict(enumerate(dcl)))
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = scipy_stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    t = mean / (sd / math.sqrt(3))
    assert (got.ci_low, got.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert got.p_value == pytest.approx(2 * scipy_stats.t.sf(t, 2), rel=1e-9)
    for wrong_half in (
        1.96 * sd / math.sqrt(3),
        scipy_stats.t.ppf(0.975, 3) * sd / math.sqrt(3),
        scipy_stats.t.ppf(0.975, 2) * statistics.pstdev(d) / math.sqrt(3),
    ):
        assert abs((got.ci_high - got.ci_low) / 2 - wrong_half) > 0.05
    assert abs(got.p_value - scipy_stats.t.sf(t, 2)) > 0.005
    assert summarize([36.0, 38.0]).std == pytest.approx(math.sqrt(2)) != pytest.approx(1.0)


# ----------------------------------------------------------------------------- which rows the tables hold
def stats_of(*experiments):
    """ExperimentStats of synthetic finished runs: (name, method, group, values by seed)."""
    from dcl.report.analysis import experiment_stats

    results = []
    for name, method, group, values in experiments:
        for seed, value in enumerate(values):
            spec = expected_run("train", method, name, seed, group)
            results.append(dcl_runs.RunResult(expected=spec, status="finished", eval={"cityscapes.AP": value}))
    return experiment_stats(results)


def test_comparisons_pair_each_main_dcl_experiment_with_its_one_baseline_only():
    from dcl.report.analysis import comparisons

    experiments = stats_of(
        ("a-base", "baseline", "main", (30.0, 31.0)),
        ("b-dcl", "dcl", "main", (31.5, 32.0)),
        ("c-abl", "dcl", "ablation", (29.0, 30.0)),
    )
    got = comparisons(experiments)
    assert {(c.baseline.name, c.dcl.name) for c in got} == {("a-base", "b-dcl")}
    (ap,) = [c for c in got if c.metric == "cityscapes.AP"]
    assert ap.difference.mean == pytest.approx(statistics.mean([1.5, 1.0]))


def test_experiments_are_in_paper_order_baseline_before_dcl_unknown_values_last():
    from dcl.report.analysis import _rank

    # Names sort the other way round, so only the method order puts the baseline first.
    experiments = stats_of(
        ("z-dcl", "dcl", "main", (31.0,)), ("a-other", "other", "main", (1.0,)), ("y-base", "baseline", "main", (30.0,))
    )
    assert [e.name for e in experiments] == ["y-base", "z-dcl", "a-other"]
    assert _rank("other", ("baseline", "dcl")) == (2, "other")


def test_error_summary_defaults_to_the_full_dataset_and_counts_no_seed_when_a_type_is_missing():
    from dcl.report.analysis import ExperimentStats

    spec = expected_run()
    run = dcl_runs.RunResult(
        expected=spec,
        status="finished",
        errors=dcl_runs.ErrorAnalysis(30.0, {"fFP": 1.25}),
        errors_occ=dcl_runs.ErrorAnalysis(20.0, {"fFP": 4.0}),
    )
    stats = ExperimentStats(runs=[run], errors={"fFP": {0: 1.25}}, errors_occ={"fFP": {0: 4.0}})
    assert stats.error_summary("fFP", legacy=False) == stats.error_summary("fFP", legacy=False, occ=False)
    assert stats.error_summary("fFP", legacy=False).mean == 1.25
    assert stats.error_summary("fFP", legacy=False, occ=True).mean == 4.0
    missing = stats.error_summary("bFP", legacy=False)
    assert math.isnan(missing.mean) and math.isnan(missing.std) and missing.n == 0


def test_a_seed_without_the_metric_cannot_be_judged_and_the_row_keeps_its_experiment():
    from dcl.report.analysis import experiment_stats, reproduction

    results = []
    for seed, eval_ in enumerate(({"cityscapes.AP": 36.0}, {"cityscapes.AP50": 60.0})):
        spec = expected_run("train", "dcl", "x", seed)
        results.append(dcl_runs.RunResult(expected=spec, status="finished", eval=eval_))
    (experiment,) = experiment_stats(results)
    (row,) = reproduction([published_entry(36.0)], [experiment])
    assert (row.verdict, row.reason) == ("cannot be judged", "eval.json of seed 1 has no cityscapes.AP")
    assert row.experiment is experiment


def test_output_names_import_without_pandas_or_matplotlib():
    """The Snakefile reads the table and figure names on a login node: plain data, no heavy imports."""
    code = (
        "import sys; from dcl.report import FIGURE_NAMES, TABLE_NAMES; "
        "print(list(TABLE_NAMES), list(FIGURE_NAMES), sorted({'matplotlib', 'pandas', 'scipy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{list(TABLES)} {list(FIGURES)} []"


# ----------------------------------------------------------------------------- a published number belongs to one model
# What detectron2's model zoo measured for each released checkpoint (mask AP, box AP).
MODEL_ZOO = {
    "modelzoo_coco_mask_rcnn_R_50_FPN_1x": (35.2, 38.6),
    "modelzoo_coco_mask_rcnn_R_50_FPN_3x": (37.2, 41.0),
    "modelzoo_coco_mask_rcnn_R_101_FPN_3x": (38.6, 42.9),
}


def test_paper_released_checkpoints_are_judged_against_their_own_models_numbers(tmp_path):
    """The paper's full matrix (`dcl plan configs/paper.yaml`), every run folder filled, the real
    published.yaml: each released checkpoint meets its own model's numbers only (issue 26: the 3x
    and R101 ones were judged against R50-FPN 1x's 35.2), and no main-table row shows another
    model's Paper value."""
    from dcl.workflow.experiments import Plan, read_config_file
    from dcl.report import analysis, table, tables

    plan = Plan(read_config_file(REPO / "configs" / "paper.yaml"), repo_root=REPO, working_dir=REPO)
    (tmp_path / "experiments.json").write_text(json.dumps(plan.document()))
    _, expected = dcl_runs.load_experiments(tmp_path / "experiments.json")
    for run in expected:
        if (tmp_path / run.run_dir / "eval.json").exists():
            continue  # an ablation point that is its base experiment
        mask, box = MODEL_ZOO.get(run.experiment, (33.0 + run.seed, 37.0 + run.seed))
        eval_json = {"segm": coco_section(mask), "bbox": coco_section(box)}
        if run.dataset == "cityscapes":
            eval_json["cityscapes"] = {"AP": mask + 1, "AP50": mask + 26}
        record = {"experiment": run.experiment, "seed": run.seed, "kind": run.kind, "method": run.method}
        analyses = {"errors": errors_record({"FN": 1.0}, False), "legacy": errors_record({"FN": 1.5}, True)}
        write_run(tmp_path, {**record, "run_dir": run.run_dir}, eval_json=eval_json, **analyses)
    published = dcl_published.load_published(PUBLISHED)
    experiments = analysis.experiment_stats(dcl_runs.load_run(tmp_path, run) for run in expected)
    assert all(run.status == "finished" for e in experiments for run in e.runs)
    rows = analysis.reproduction(published, experiments)

    # A number judges only experiments of its own model, and each model-zoo checkpoint is judged
    # on both its numbers, which it measures exactly.
    assert all(r.experiment is None or r.experiment.spec.identity == r.entry.identity for r in rows)
    for name, (mask, box) in MODEL_ZOO.items():
        own = {r.entry.metric: (r.entry.value, r.verdict) for r in rows if r.experiment and r.experiment.name == name}
        assert own == {"segm.AP": (mask, "reproduced"), "bbox.AP": (box, "reproduced")}, name
    # The 1x entries still judge the trained COCO models and the 1x checkpoint (nothing else).
    one_x = [r for r in rows if r.entry.schedule == "1x" and r.entry.method == "baseline"]
    assert {r.experiment.name for r in one_x} == {"coco_baseline", "modelzoo_coco_mask_rcnn_R_50_FPN_1x"}
    assert not [r for r in rows if r.verdict == "not in matrix"]

    # Main table: one row per model, each with its own Paper value.
    main = tables.main_table(experiments, analysis.comparisons(experiments), published)
    csv_rows = list(csv.DictReader(to_csv(main).splitlines()))
    paper = {r["experiment"]: r["published"] for r in csv_rows}
    assert {name: paper[name] for name in MODEL_ZOO} == {name: str(mask) for name, (mask, _) in MODEL_ZOO.items()}
    by_value: dict[tuple, set] = {}  # (dataset, init, Paper) -> models; one table per dataset and init
    for r in csv_rows:
        if r["published"]:
            model = (r["method"], r["model"], r["backbone"], r["schedule"])
            by_value.setdefault((r["dataset"], r["init"], r["published"]), set()).add(model)
    assert all(len(models) == 1 for models in by_value.values()), by_value
    coco = table.to_markdown(main).split("### COCO, ImageNet initialisation")[1].split("\n\n")[2]
    labels = [line.split(" | ")[0].lstrip("| ") for line in coco.splitlines()[2:]]
    assert labels == [
        "Baseline",
        "DCL",
        "Baseline (released)",
        "Baseline (released, R50-FPN 3x)",
        "Baseline (released, R101-FPN 3x)",
        "DCL (released)",
        "DCL − baseline",
    ]


def test_a_published_entry_of_a_model_not_in_the_matrix_says_so():
    from dcl.report.analysis import reproduction

    entry = dcl_published.PublishedEntry(**{**vars(published_entry(40.0)), "backbone": "R101-FPN", "schedule": "3x"})
    (row,) = reproduction([entry], stats_of(("x", "dcl", "main", (37.0, 37.2))))
    assert row.experiment is None and row.verdict == "not in matrix"
    assert "cityscapes/imagenet/dcl/mask_rcnn/R101-FPN/3x" in row.reason


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"detector": "Mask R-CNN R50-FPN 3x"}, "does not name the entry's backbone 'R50-FPN' and schedule None"),
        ({"detector": "Mask R-CNN R101-FPN 3x", "schedule": "3x"}, "backbone 'R50-FPN'"),
        ({"detector": "Mask R-CNN R50-FPN", "schedule": "3x"}, "schedule '3x'"),
        ({"detector": "Mask R-CNN R50-FPN 1x", "schedule": "1x", "metric": "bbox.AP"}, "a second reproducible entry"),
        ({"schedule": "three"}, "'schedule' must be null or like 1x, 3x"),
    ],
)
def test_published_entries_name_their_model_consistently(tmp_path, fields, words):
    base = {"dataset": "coco", "init": "imagenet", "method": "baseline", "detector": "Mask R-CNN R50-FPN 1x"}
    first = {**base, "schedule": "1x", "metric": "bbox.AP", "value": 38.6, "source": "s"}
    second = {**base, "metric": "segm.AP", "value": 35.2, "source": "s", **fields}
    path = tmp_path / "published.yaml"
    path.write_text(json.dumps({"published": [first, second]}))
    with pytest.raises(InputError, match=re.escape(words)):
        dcl_published.load_published(path)


def test_published_precision_is_the_written_one(tmp_path):
    path = tmp_path / "published.yaml"
    for text, tolerance in {"41.0": 0.05, "41": 0.5, "37.12": 0.005}.items():
        path.write_text(
            "published:\n  - {dataset: coco, init: imagenet, method: dcl, detector: d R50-FPN, metric: segm.AP, "
            f"value: {text}, source: s}}\n"
        )
        (loaded,) = dcl_published.load_published(path)
        assert loaded.tolerance == pytest.approx(tolerance), text
