"""Timed training steps on the toy datasets, for the benchmarks that compare models step by step
(bench_loss.py, bench_refinemask.py)."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping


@contextlib.contextmanager
def toy_datasets() -> Iterator[None]:
    """The toy datasets registered with detectron2: those at ``$DCL_TOY_DATASETS`` (else
    ``<$DETECTRON2_DATASETS or datasets>/toy``), or, when absent, new ones in a temporary directory
    removed on exit."""
    from dcl.data.datasets import register_datasets, toy_root

    with contextlib.ExitStack() as stack:
        root = toy_root()
        if not ((root / "coco" / "annotations").is_dir() and (root / "cityscapes" / "annotations").is_dir()):
            from dcl.data.toydata import generate_toy_datasets

            temporary = stack.enter_context(tempfile.TemporaryDirectory(prefix="dcl-bench-toy-"))
            generate_toy_datasets(temporary)
            os.environ["DCL_TOY_DATASETS"] = temporary
        register_datasets()
        yield


def toy_batches(cfg, count: int) -> list[list[dict]]:
    """``count`` training batches of ``cfg``'s first training dataset, mapped as detectron2's
    training loader maps them (``SOLVER.IMS_PER_BATCH`` images each, cycling through the dataset)."""
    from detectron2.data import DatasetCatalog, DatasetMapper

    mapper = DatasetMapper(cfg, True)
    dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    size = cfg.SOLVER.IMS_PER_BATCH
    return [[mapper(dicts[(i * size + j) % len(dicts)]) for j in range(size)] for i in range(count)]


def median_step_seconds(models: Mapping, optimizers: Mapping, batches: list, warmup: int = 2) -> dict[str, float]:
    """The median time of one training step (forward, backward, optimizer step) of each model on
    the same batches. The models take turns in rotating order, so that load from other processes
    hits all alike; the first ``warmup`` batches (allocators, caches) are not timed."""
    from detectron2.utils.events import EventStorage

    names = list(models)
    times = {name: [] for name in names}
    with EventStorage():
        for i, batch in enumerate(batches):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                model, optimizer = models[name], optimizers[name]
                model.train()
                start = time.perf_counter()
                losses = model(batch)
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
