"""Speed of the dense contrastive loss, and what DCL adds to a training step.

    .venv/bin/python benchmarks/bench_loss.py            # both parts
    .venv/bin/python benchmarks/bench_loss.py --part loss
    .venv/bin/python benchmarks/bench_loss.py --part step --steps 30

``loss``: N=100 RoIs, C=256, 28x28, K=32, forward + backward on the CPU. The vectorised
``dcl.model.loss.dense_contrastive_loss`` against a straightforward per-RoI Python loop computing the
same values from the same sample indices (the way the original implementation computes it), and
the whole DCL term (``DenseContrastiveLoss``: projection, normalisation, sampling, loss) against
the original's per-RoI pipeline (project and normalise the whole map, sample each RoI with
``nonzero`` + ``randint``). Target: the loss at least 20x faster than the loop.

``step``: the toy config's training step (forward, backward, SGD update) for the baseline and for
DCL with identical weights on identical batches, steps interleaved so that load from other
processes hits both alike; medians. Target: DCL overhead under 10% of the step time. Uses the toy
datasets at ``$DCL_TOY_DATASETS`` (else ``<$DETECTRON2_DATASETS or datasets>/toy``), generating
them in a temporary directory when absent.

Prints the measured numbers; the process exits 0 whether or not a target is met (a benchmark, not
a test).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dcl.model.loss import DenseContrastiveLoss, dense_contrastive_loss, sample_points  # noqa: E402


def roi_loss(anchors, positives, negatives, temperature):
    """One RoI's loss from its (K, C) anchor, positive and negative features, as the original."""
    sim_pos = anchors @ positives.T / temperature
    sim_neg = anchors @ negatives.T / temperature
    shift = sim_pos.max(1, keepdim=True)[0].detach()
    exp_pos = (sim_pos - shift).exp()
    exp_neg = (sim_neg - shift).exp().sum(1, keepdim=True)
    return (-torch.log(exp_pos / (exp_pos + exp_neg))).mean()


def loop_loss(feats, anchor_idx, pos_idx, neg_idx, temperature):
    """Per-RoI loop, as in the original implementation: (N,) losses."""
    losses = []
    for r in range(feats.shape[0]):
        f = feats[r].flatten(1)  # (C, H*W)
        losses.append(roi_loss(f[:, anchor_idx[r]].T, f[:, pos_idx[r]].T, f[:, neg_idx[r]].T, temperature))
    return torch.stack(losses)


def loop_module(feats, masks, proj_head, num_samples, temperature):
    """The original per-RoI pipeline: project + normalise the whole map, then loop over RoIs."""
    x = F.normalize(proj_head(feats), dim=1)
    losses = []
    for r in range(x.shape[0]):
        inside, outside = masks[r].nonzero(), (~masks[r]).nonzero()
        a = inside[torch.randint(len(inside), (num_samples,))]
        p = inside[torch.randint(len(inside), (num_samples,))]
        n = outside[torch.randint(len(outside), (num_samples,))]
        losses.append(
            roi_loss(x[r][:, a[:, 0], a[:, 1]].T, x[r][:, p[:, 0], p[:, 1]].T, x[r][:, n[:, 0], n[:, 1]].T, temperature)
        )
    return torch.stack(losses).mean()


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_loss(repeats: int) -> None:
    n, c, side, k, temperature = 100, 256, 28, 32, 0.07
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, side, side, dtype=torch.bool)
    for r in range(n):  # rectangles of 100..600 pixels: all valid for K = 32
        h, w = torch.randint(10, 25, (2,), generator=g).tolist()
        top, left = (
            torch.randint(0, side - h + 1, (1,), generator=g).item(),
            torch.randint(0, side - w + 1, (1,), generator=g).item(),
        )
        masks[r, top : top + h, left : left + w] = True
    raw = torch.randn(n, c, side, side, generator=g).relu()
    feats = F.normalize(raw, dim=1).requires_grad_()
    idx = sample_points(masks, k, generator=g)

    vectorised = dense_contrastive_loss(feats, *idx, temperature)
    looped = loop_loss(feats, *idx, temperature)
    assert torch.allclose(vectorised, looped, atol=1e-5, rtol=1e-5), "the two implementations disagree"

    def run(fn):
        def step():
            feats.grad = None
            fn(feats, *idx, temperature).mean().backward()

        return step

    t_vec = timed(run(dense_contrastive_loss), repeats)
    t_loop = timed(run(loop_loss), max(3, repeats // 4))
    print(f"loss, forward+backward, N={n} C={c} {side}x{side} K={k}, {torch.get_num_threads()} thread(s):")
    print(
        f"  vectorised {t_vec * 1e3:8.2f} ms   per-RoI loop {t_loop * 1e3:8.2f} ms   "
        f"speed-up {t_loop / t_vec:6.1f}x (target >= 20x)"
    )

    module = DenseContrastiveLoss(c, num_samples=k, temperature=temperature, loss_weight=1.0)
    raw.requires_grad_()

    def module_step():
        raw.grad = None
        module(raw, masks).loss.backward()

    def loop_step():
        raw.grad = None
        loop_module(raw, masks, module.proj_head, k, temperature).backward()

    t_mod = timed(module_step, repeats)
    t_mod_loop = timed(loop_step, max(3, repeats // 4))
    print("whole DCL term (projection, normalisation, sampling, loss), forward+backward:")
    print(
        f"  DenseContrastiveLoss {t_mod * 1e3:8.2f} ms   original-style loop {t_mod_loop * 1e3:8.2f} ms   "
        f"speed-up {t_mod_loop / t_mod:6.1f}x"
    )


def bench_step(steps: int) -> None:
    import dcl.compat  # noqa: F401
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    from dcl.training.config import load_config
    from toy_steps import median_step_seconds, toy_batches, toy_datasets

    config = str(REPO / "configs" / "toy_coco_mask_rcnn_R18_FPN.yaml")
    dcl_heads = ["MODEL.ROI_HEADS.NAME", "ContrastRoIHeads", "MODEL.ROI_MASK_HEAD.NAME", "ContrastConvUpsampleHead"]
    cfg_base, cfg_dcl = load_config(config, []), load_config(config, dcl_heads)
    torch.manual_seed(0)
    base = build_model(cfg_base)
    model = build_model(cfg_dcl)
    model.load_state_dict(base.state_dict(), strict=False)
    models = {"baseline": base, "dcl": model}
    optimizers = {name: build_optimizer(cfg_base if name == "baseline" else cfg_dcl, m) for name, m in models.items()}
    with toy_datasets():
        median = median_step_seconds(models, optimizers, toy_batches(cfg_base, steps + 2))
    t_base, t_dcl = median["baseline"], median["dcl"]
    print(
        f"toy training step (configs/toy_coco_mask_rcnn_R18_FPN.yaml, batch {cfg_base.SOLVER.IMS_PER_BATCH}), "
        f"median of {steps}, {torch.get_num_threads()} thread(s):"
    )
    print(
        f"  baseline {t_base * 1e3:8.1f} ms   DCL {t_dcl * 1e3:8.1f} ms   "
        f"overhead {100 * (t_dcl - t_base) / t_base:+5.1f}% (target < 10%)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("loss", "step", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions of the loss (default 20)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model (default 20)")
    args = parser.parse_args()
    if args.part in ("loss", "all"):
        bench_loss(args.repeats)
    if args.part in ("step", "all"):
        bench_step(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
