"""CUDA: the loss and the heads equal their CPU results, toy training runs, and mixed precision
keeps DCL in float32. Run with ``pytest -m gpu`` on a machine with a CUDA GPU (skipped elsewhere)."""

import json
import math
import os
import subprocess
import sys

import pytest

import dcl.compat  # noqa: F401  (before detectron2)
import torch
from detectron2.utils.events import EventStorage

from dcl.model.loss import gather_points
from model_fixtures import make_heads, training_instances
from toy_training import DCL_HEADS
from toy_training import TOY_COCO as TOY_CONFIG

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matmuls/convolutions (on by default for convolutions) round to 10 bits: off here."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_mask_head_and_dcl_loss_on_cuda_equal_the_cpu():
    _, head = make_heads()
    head.train()
    gpu_head = make_heads()[1].cuda().train()
    gpu_head.load_state_dict(head.state_dict())
    x = torch.randn(7, 16, 14, 14, generator=torch.Generator().manual_seed(1))
    instances = training_instances()
    features = head.mask_features(x)
    gpu_features = gpu_head.mask_features(x.cuda())
    torch.testing.assert_close(gpu_features.cpu(), features, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu_head.layers(x.cuda()).cpu(), head.layers(x), rtol=1e-4, atol=1e-5)
    # The loss at the points the CPU drew (random draws differ between devices).
    gt = head._contrast_gt_masks(instances, features.shape[-1], features.device)
    result = head.contrast_loss(features, gt, generator=torch.Generator().manual_seed(2))
    assert result.num_valid_rois > 0
    index = torch.cat([result.anchor_idx, result.pos_idx, result.neg_idx], dim=1)
    points = gather_points(gpu_features[result.valid_rois.cuda()], index.cuda())
    embedded = gpu_head.contrast_loss.embed(points)
    k = head.contrast_loss.num_samples
    per_roi = gpu_head.contrast_loss._loss_fn(*embedded.split(k, dim=1), head.contrast_loss.temperature)
    torch.testing.assert_close(per_roi.cpu(), result.per_roi_loss, rtol=1e-4, atol=1e-5)
    (result.loss).backward()
    (per_roi.mean() * head.contrast_loss.loss_weight).backward()
    for (name, p), gpu_p in zip(head.named_parameters(), gpu_head.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(gpu_p.grad.cpu(), p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_mixed_precision_keeps_the_dcl_loss_float32_and_finite():
    head = make_heads()[1].cuda().train()
    x = torch.randn(7, 16, 14, 14, device="cuda")
    instances = [i.to("cuda") for i in training_instances()]
    with torch.autocast("cuda", dtype=torch.float16), EventStorage():
        features = head.mask_features(x)
        losses = head(x, instances)
    assert features.dtype == torch.float16  # autocast is active in the head
    assert losses["loss_contrast"].dtype == torch.float32 and torch.isfinite(losses["loss_contrast"])
    torch.amp.GradScaler("cuda").scale(sum(losses.values())).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.contrast_loss.parameters())


@pytest.mark.parametrize("amp", [False, True])
def test_toy_dcl_training_on_cuda(amp, toy_datasets, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "DCL_TOY_DATASETS": str(toy_datasets)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcl",
            "train",
            "--config-file",
            TOY_CONFIG,
            *DCL_HEADS,
            "MODEL.DEVICE",
            "cuda",
            "SOLVER.AMP.ENABLED",
            str(amp),
            "SOLVER.MAX_ITER",
            "20",
            "SOLVER.IMS_PER_BATCH",
            "4",
            "SOLVER.WARMUP_ITERS",
            "5",
            "OUTPUT_DIR",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    losses = [line for line in lines if "total_loss" in line]
    assert losses and all(math.isfinite(line[k]) for line in losses for k in line if k.startswith("loss_"))
    assert all(line["loss_contrast"] > 0 for line in losses)
    assert json.loads((out / "run.json").read_text())["gpus"]["count"] == 1
