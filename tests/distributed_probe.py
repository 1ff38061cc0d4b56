"""`python tests/distributed_probe.py train ...`: `dcl train` with a hook on every worker that
records what the distributed tests check, and optional faults. Set by environment variables
(spawned workers inherit them, and re-run this module's top level, which installs the hook):

DCL_PROBE_DIR        each worker writes ``probe_rank<R>.json`` there (at the end of training):
                     ``pid``, ``completed`` iterations, ``images`` (training file names in the
                     order mapped), ``num_valid_rois`` per step, ``proj_grads`` per step
                     (``{parameter: [norm, sum]}``, None without a gradient), ``losses`` (main
                     worker: detectron2's per-iteration values, averaged over workers).
DCL_PROBE_SIGTERM    "RANK:ITER": that worker sends itself SIGTERM after iteration ITER.
DCL_PROBE_RAISE      "RANK:ITER": that worker raises RuntimeError after iteration ITER (first
                     touching ``raised_rank<R>`` in DCL_PROBE_DIR).
DCL_PROBE_NO_VALID_ROI  "RANK": on that worker no RoI is valid for DCL (all-background GT masks).
"""

import json
import os
import signal
import sys
from pathlib import Path

import dcl.training.engine  # first: applies dcl.compat before detectron2 loads
import dcl.training.sampler
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm


MAPPED: list[str] = []


def _rank_iter(name):
    value = os.environ.get(name)
    return tuple(int(x) for x in value.split(":")) if value else (None, None)


class RecordingMapper(dcl.training.sampler.DatasetMapper):
    def __call__(self, dataset_dict):
        if self.is_train:
            MAPPED.append(Path(dataset_dict["file_name"]).name)
        return super().__call__(dataset_dict)


class Probe(HookBase):
    def before_train(self):
        self.grads = []
        self.rank = comm.get_rank()
        if os.environ.get("DCL_PROBE_NO_VALID_ROI") == str(self.rank):
            head = type(self._mask_head())
            original = head._contrast_gt_masks
            head._contrast_gt_masks = lambda s, *a: torch.zeros_like(original(s, *a))

    def _mask_head(self):
        model = self.trainer.model
        return getattr(model, "module", model).roi_heads.mask_head

    def after_step(self):
        contrast = getattr(self._mask_head(), "contrast_loss", None)
        if contrast is not None and contrast.with_proj:
            self.grads.append(
                {
                    name: None if p.grad is None else [p.grad.norm().item(), p.grad.sum().item()]
                    for name, p in contrast.proj_head.named_parameters()
                }
            )
        for variable, fault in (("DCL_PROBE_SIGTERM", "signal"), ("DCL_PROBE_RAISE", "raise")):
            if _rank_iter(variable) == (self.rank, self.trainer.iter):
                if fault == "signal":
                    os.kill(os.getpid(), signal.SIGTERM)
                else:
                    (Path(os.environ["DCL_PROBE_DIR"]) / f"raised_rank{self.rank}").touch()
                    raise RuntimeError(f"probe: worker {self.rank} fails after iteration {self.trainer.iter}")

    def after_train(self):
        storage = self.trainer.storage
        histories = storage.histories()
        record = {
            "rank": self.rank,
            "pid": os.getpid(),
            "completed": self.trainer.completed_iterations,
            "images": MAPPED,
            "proj_grads": self.grads,
            "num_valid_rois": [v for v, _ in histories["dcl/num_valid_rois"].values()]
            if "dcl/num_valid_rois" in histories
            else [],
            "losses": {
                k: [v for v, _ in h.values()]
                for k, h in histories.items()
                if k.startswith("loss_") or k == "total_loss"
            },
        }
        out = Path(os.environ["DCL_PROBE_DIR"]) / f"probe_rank{self.rank}.json"
        out.write_text(json.dumps(record))


dcl.training.sampler.DatasetMapper = RecordingMapper
_build_hooks = dcl.training.engine.Trainer.build_hooks
dcl.training.engine.Trainer.build_hooks = lambda self: [Probe()] + _build_hooks(self)

if __name__ == "__main__":
    from dcl.cli import main

    sys.exit(main(sys.argv[1:]))
