"""The resumable data order of ``dcl train``: batches of a resumed run are the uninterrupted run's.

:class:`ResumableTrainingSampler` is detectron2's ``TrainingSampler`` as a stream of
aspect-ratio grouped batches that can start part-way; :class:`SeededBatchMapper` maps each image
with every RNG seeded from its position in that stream; :func:`build_train_loader` puts them in a
data loader whose iterator starts on the first batch (:class:`LazyLoader`) and whose worker
processes ignore the stop signals and are ended for certain.

The dataset dicts are held serialized (:func:`serialized_dicts`: detectron2's
``DatasetFromList(serialize=True)``, one pickled byte buffer): a list of Python dicts would be
copied page by page into every forked loader worker as soon as the worker touches the objects'
reference counts (COCO train2017: ~1 GB private memory per worker after one pass over the data,
against ~13 MB serialized; ``benchmarks/bench_scale.py`` measures it).

detectron2's ``build_detection_train_loader(cfg, sampler=..., mapper=...)`` does not serve here:
its ``MapDataset`` retries a rejected image with an RNG of its own (not a function of the stream
position), its aspect-ratio grouping runs after mapping in the main process (a resumed run would
have to map every skipped image to rebuild the groups), its workers take detectron2's
``worker_init_fn`` (no signal immunity) and starting them draws from the training's RNG.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import random
from typing import Iterator, Optional, Sequence

import dcl.compat  # noqa: F401  (before any detectron2 module)
import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import DatasetFromList, DatasetMapper, get_detection_dataset_dicts
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from dcl.training.preemption import ignore_stop_signals

__all__ = [
    "LazyLoader",
    "ResumableTrainingSampler",
    "SeededBatchMapper",
    "build_train_loader",
    "kill_loader_workers",
    "release_freed_memory",
    "sample_seed",
    "seeded_loader",
    "serialized_dicts",
]


class ResumableTrainingSampler(TrainingSampler):
    """detectron2's TrainingSampler as a stream of batches that can start part-way.

    Each rank takes its share of detectron2's infinite index stream (positions ``rank``,
    ``rank + world``, ...) and forms batches of ``batch_size`` from it, grouped by aspect ratio
    like detectron2's ``AspectRatioGroupedDataset`` (landscape vs portrait, from the dataset
    dicts' width/height) when ``aspect_ratios`` is given. A batch is a list of
    ``(position, index)``: the global stream position seeds that image's augmentation.
    Grouping works on indices only, so ``skip`` (batches) makes a resumed run start at exactly
    the batch the interrupted one would have drawn next; ``seed`` is checkpointed for that.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        aspect_ratios: Optional[list[int]] = None,
        shuffle: bool = True,
        seed: Optional[int] = None,
    ):
        if batch_size < 1 or size < 1:  # no batch would ever be complete: an endless loop
            raise ValueError(f"a training sampler needs images and a batch of at least 1 (got {size}, {batch_size})")
        super().__init__(size, shuffle, seed)
        self.batch_size = batch_size
        self.aspect_ratios = aspect_ratios  # per index: 0 landscape, 1 portrait
        self.skip = 0

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return itertools.islice(self._batches(), self.skip, None)

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        positions = itertools.count(self._rank, self._world_size)
        indices = itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)
        buckets: list[list[tuple[int, int]]] = [[], []]
        for position, index in zip(positions, indices):
            bucket = buckets[self.aspect_ratios[index] if self.aspect_ratios else 0]
            bucket.append((position, index))
            if len(bucket) == self.batch_size:
                yield bucket[:]
                del bucket[:]


def sample_seed(seed: int, *keys: int) -> int:
    """A seed for the RNGs derived from ``seed`` and ``keys`` (e.g. a stream position)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]) % 2**31


class SeededBatchMapper(torchdata.Dataset):
    """Maps a batch of ``(position, index)`` to detectron2's list of dicts, each image with
    every RNG seeded from (sampler seed, stream position): augmentation is a function of the
    position alone, whichever worker maps it and however often the workers restart."""

    def __init__(self, dicts: Sequence[dict], mapper, sampler: ResumableTrainingSampler):
        self.dicts, self.mapper, self.sampler = dicts, mapper, sampler

    def __getitem__(self, batch: list[tuple[int, int]]) -> list[dict]:
        return [self._map(position, index) for position, index in batch]

    def _map(self, position: int, index: int) -> dict:
        for attempt in range(10):
            seed_all_rng(sample_seed(self.sampler.seed, position, attempt))
            mapped = self.mapper(self.dicts[index])
            if mapped is not None:
                return mapped
            # As detectron2's MapDataset: the mapper rejected the image, take another one.
            index = random.randrange(len(self.dicts))
        raise RuntimeError(f"the data mapper rejected 10 images in a row (last: {self.dicts[index].get('file_name')})")


def _as_is(batch: list[dict]) -> list[dict]:
    return batch


class LazyLoader:
    """A data loader whose iterator starts nothing until the first batch is requested (the
    trainer creates its iterator before resuming, i.e. before the sampler knows its offset),
    and whose worker processes :meth:`close` ends for certain."""

    def __init__(self, loader: torchdata.DataLoader):
        self.loader = loader
        self._iterator = None

    def __iter__(self) -> Iterator[list[dict]]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        yield from self._iterator

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        workers = list(getattr(iterator, "_workers", []))
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # asks the workers to exit and joins them for a few seconds
        _kill(workers)


def serialized_dicts(dicts: list[dict]) -> DatasetFromList:
    """``dicts`` pickled into one numpy byte buffer: indexing returns a fresh copy of a dict, and
    forked workers share the buffer's pages (no Python object in it has a reference count)."""
    return DatasetFromList(dicts, copy=False, serialize=True)


def seeded_loader(dicts: Sequence[dict], mapper, sampler: ResumableTrainingSampler, num_workers: int) -> LazyLoader:
    """The loader of :func:`build_train_loader` on given dataset dicts (best
    :func:`serialized_dicts`) and mapper: batches of ``sampler``, each image mapped by
    :class:`SeededBatchMapper`, in ``num_workers`` signal-immune worker processes."""
    return LazyLoader(
        torchdata.DataLoader(
            SeededBatchMapper(dicts, mapper, sampler),
            sampler=sampler,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            worker_init_fn=ignore_stop_signals,
            # Its own generator: starting the workers (on the first batch, also of a resumed run)
            # must not draw from the training's RNG.
            generator=torch.Generator().manual_seed(sampler.seed),
        )
    )


def build_train_loader(cfg: CfgNode) -> tuple[LazyLoader, ResumableTrainingSampler]:
    """detectron2's training data (same dataset, mapper, index stream and aspect-ratio batches)
    from a resumable batch sampler, with per-image seeded augmentation and signal-immune workers;
    the loader and its sampler (whose ``skip`` and ``seed`` a resume sets)."""
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    aspect_ratios = (
        [0 if d["width"] > d["height"] else 1 for d in dicts] if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
    )
    sampler = ResumableTrainingSampler(len(dicts), cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size(), aspect_ratios)
    dataset = serialized_dicts(dicts)
    del dicts  # the serialized copy is the only one left (detectron2's catalog caches none)
    release_freed_memory()
    return seeded_loader(dataset, DatasetMapper(cfg, True), sampler, cfg.DATALOADER.NUM_WORKERS), sampler


def release_freed_memory() -> None:
    """Give the memory of freed objects back to the OS: the list of dataset dicts, once
    serialized, leaves its pages in glibc's heap otherwise (COCO train: the main process at
    1.7 GB instead of 1.1 GB, and every forked worker starts with that heap)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _kill(processes) -> None:
    """SIGKILL what is still alive: the loader workers ignore the stop signals, which is also
    what the interpreter's exit handler sends before it waits for them forever."""
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join(timeout=10)


def kill_loader_workers() -> None:
    """Any data-loader worker of this process still alive (e.g. an evaluation loader whose
    iterator an exception kept): kill it, so the process can exit."""
    import multiprocessing

    from torch.utils.data._utils.worker import _worker_loop

    _kill([p for p in multiprocessing.active_children() if getattr(p, "_target", None) is _worker_loop])
