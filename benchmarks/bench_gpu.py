"""The device check: the paper's R50-FPN Mask R-CNN (Cityscapes config) on one GPU, baseline vs DCL.

    python benchmarks/bench_gpu.py                                   # CUDA, 1024x2048, ~3-5 min
    python benchmarks/bench_gpu.py --device cpu --iters 2 --size small  # the CPU check (CI)

Synthetic batches of 2 images (``--size full``: 1024 x 2048 as Cityscapes; ``small``: 128 x 256)
with 20 random box-shaped instances of the 8 classes each; random initial weights (no download;
speed does not depend on them; BN instead of the frozen BN that is meant for ImageNet weights). Trains ``--iters`` timed steps (after ``--warmup``) of forward,
backward and SGD update, as detectron2's SimpleTrainer/AMPTrainer do, for:

* ``baseline``: the config as is;
* ``dcl``: ``ContrastRoIHeads`` + ``ContrastConvUpsampleHead`` (dcl.model.loss, vectorised);
* ``dcl-loop``: the same model with the loss computed per RoI in a Python loop, as the original
  implementation does (``benchmarks/bench_loss.py``'s reference), for comparison;

each with AMP off and on (``--amp``; float16 on CUDA, bfloat16 on the CPU). Prints s/iter, the
overhead over the baseline in %, peak GPU memory, and inference s/image of baseline vs DCL (the
same network at test time: the ratio must be ~1). Exits 0 whether or not the numbers are good
(a benchmark, not a test); 1 if a step produced a non-finite loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import dcl.compat  # noqa: E402,F401  (before detectron2)
import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from bench_loss import loop_module  # noqa: E402
from dcl.model.loss import DenseContrastiveLossOutput, valid_roi_mask  # noqa: E402
from dcl.training.config import load_config  # noqa: E402

CONFIG = REPO / "configs" / "cityscapes_mask_rcnn_R_50_FPN.yaml"
DCL_HEADS = ["MODEL.ROI_HEADS.NAME", "ContrastRoIHeads", "MODEL.ROI_MASK_HEAD.NAME", "ContrastConvUpsampleHead"]
SIZES = {"full": (1024, 2048), "small": (128, 256)}
BATCH, INSTANCES, CLASSES = 2, 20, 8


def synthetic_batch(height: int, width: int, seed: int) -> list[dict]:
    """``BATCH`` images (3, H, W) with ``INSTANCES`` rectangles each, as detectron2's mapper gives them."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(BATCH):
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        masks = torch.zeros(INSTANCES, height, width, dtype=torch.bool)
        boxes = []
        for i in range(INSTANCES):
            h = int(torch.randint(height // 16, height // 3, (1,), generator=g))
            w = int(torch.randint(width // 32, width // 6, (1,), generator=g))
            y0 = int(torch.randint(0, height - h, (1,), generator=g))
            x0 = int(torch.randint(0, width - w, (1,), generator=g))
            masks[i, y0 : y0 + h, x0 : x0 + w] = True
            image[:, y0 : y0 + h, x0 : x0 + w] = float(25 * (i % 10))
            boxes.append([x0, y0, x0 + w, y0 + h])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.randint(0, CLASSES, (INSTANCES,), generator=g)
        instances.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


def use_loop_loss(model) -> None:
    """Replace the model's vectorised DCL term by the original's per-RoI loop (same definition)."""
    contrast = model.roi_heads.mask_head.contrast_loss

    def forward(feats, gt_masks, generator=None):
        num_rois = min(feats.shape[0], contrast.max_instances)
        masks = gt_masks[:num_rois]
        valid = valid_roi_mask(masks, contrast.num_samples).nonzero().flatten()
        if valid.numel() == 0:
            loss = feats.sum() * 0.0 + sum(p.sum() * 0.0 for p in contrast.parameters())
        else:
            loss = contrast.loss_weight * loop_module(
                feats[valid], masks[valid], contrast.proj_head, contrast.num_samples, contrast.temperature
            )
        empty = torch.empty(0, dtype=torch.long, device=feats.device)
        return DenseContrastiveLossOutput(
            loss, num_rois, int(valid.numel()), loss.new_zeros(0), valid, empty, empty, empty
        )

    contrast.forward = forward


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_time(model, cfg, batches, device: str, amp: bool, warmup: int) -> tuple[float, float]:
    """Median seconds per training step, and the last step's total loss."""
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda") if amp and device.startswith("cuda") else None
    dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    model.train()
    times, total = [], float("nan")
    with EventStorage():
        for step, batch in enumerate(batches):
            synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=amp):
                losses = model(batch)
            loss = sum(losses.values())
            optimizer.zero_grad()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
            total = loss.item()
    return statistics.median(times), total


@torch.no_grad()
def inference_time(model, batches, device: str, warmup: int) -> float:
    """Median seconds per image (one image per call, as detectron2's evaluation runs)."""
    model.eval()
    times = []
    images = [[{k: v for k, v in d.items() if k != "instances"}] for batch in batches for d in batch]
    for index, image in enumerate(images):
        synchronize(device)
        start = time.perf_counter()
        model(image)
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--iters", type=int, default=20, help="timed training steps per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="full: 1024x2048; small: 128x256")
    parser.add_argument(
        "--amp",
        choices=("both", "off", "on"),
        default=None,
        help="mixed precision variants (default: both on CUDA, off on the CPU)",
    )
    args = parser.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: error: no CUDA GPU visible; use --device cpu", file=sys.stderr)
        return 1
    amp_modes = {"both": (False, True), "off": (False,), "on": (True,)}[
        args.amp or ("both" if device.startswith("cuda") else "off")
    ]
    height, width = SIZES[args.size]
    # Random weights through the config's frozen BN (made for ImageNet weights) overflow: BN
    # instead (a per-channel affine either way, a negligible share of the step), and a small LR.
    overrides = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device, "MODEL.RESNETS.NORM", "BN", "SOLVER.BASE_LR", "1e-4"]
    cfg_base, cfg_dcl = load_config(str(CONFIG), overrides), load_config(str(CONFIG), overrides + DCL_HEADS)
    batches = [synthetic_batch(height, width, seed) for seed in range(args.warmup + args.iters)]
    name = (
        torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"R50-FPN Mask R-CNN ({CONFIG.name}), batch {BATCH} x {height}x{width}, {args.iters} steps "
        f"(+{args.warmup} warm-up), {name}, torch {torch.__version__}"
    )

    torch.manual_seed(0)
    reference = build_model(cfg_base).state_dict()
    results, failed = {}, False
    for amp in amp_modes:
        for variant in ("baseline", "dcl", "dcl-loop"):
            model = build_model(cfg_base if variant == "baseline" else cfg_dcl)
            model.load_state_dict(reference, strict=False)  # DCL: + its projection head
            if variant == "dcl-loop":
                use_loop_loss(model)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds, loss = train_time(model, cfg_dcl, batches, device, amp, args.warmup)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None
            results[variant, amp] = seconds
            failed |= not torch.isfinite(torch.tensor(loss))
            base = results[("baseline", amp)]
            print(
                f"  train  AMP {'on ' if amp else 'off'} {variant:9s} {seconds:7.3f} s/iter  "
                f"overhead {100 * (seconds - base) / base:+6.1f}%  peak memory "
                f"{'%.2f GiB' % peak if peak is not None else 'n/a'}  loss {loss:.3f}"
            )
            del model
    if len(amp_modes) == 2:
        print(
            f"  AMP speed-up: baseline {results['baseline', False] / results['baseline', True]:.2f}x, "
            f"DCL {results['dcl', False] / results['dcl', True]:.2f}x"
        )
    times = {}
    for variant, cfg in (("baseline", cfg_base), ("dcl", cfg_dcl)):
        model = build_model(cfg)
        model.load_state_dict(reference, strict=False)
        times[variant] = inference_time(model, batches, device, warmup=min(2, len(batches) * BATCH - 1))
        del model
    print(
        f"  inference baseline {times['baseline']:.3f} s/image  DCL {times['dcl']:.3f} s/image  "
        f"ratio {times['dcl'] / times['baseline']:.3f} (same network at test time: ~1)"
    )
    for amp in amp_modes:
        print(
            f"  DCL overhead (AMP {'on' if amp else 'off'}): vectorised "
            f"{100 * (results['dcl', amp] / results['baseline', amp] - 1):+.1f}%, per-RoI loop "
            f"{100 * (results['dcl-loop', amp] / results['baseline', amp] - 1):+.1f}%"
        )
    if failed:
        print("bench_gpu: error: a training step gave a non-finite loss", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
