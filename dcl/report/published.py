"""The published numbers a reproduction is judged against: ``results/published.yaml``, read strictly
(format in ``docs/design.md``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from dcl import names
from dcl.io import InputError, is_number, read_yaml, require_str, type_name
from dcl.runs import check_metric, parse_model, parse_variant

__all__ = ["PublishedEntry", "load_published"]


@dataclass(frozen=True)
class PublishedEntry:
    """One published number from ``published.yaml``."""

    dataset: str
    init: str
    method: str
    detector: str
    metric: str
    value: float
    source: str
    reproducible: bool
    note: str
    index: int  # position in the file, for messages and a stable order
    model: str = "mask_rcnn"  # the detector family, as experiments.json's `model`
    backbone: str = names.DEFAULT_BACKBONE
    schedule: str | None = None
    # Decimal places as written in published.yaml (41.0: one), which the float value loses;
    # None: those of the value's shortest form.
    decimals: int | None = field(default=None, compare=False)

    @property
    def identity(self) -> tuple[str, str, str, str, str, str | None]:
        """The model the number belongs to; it judges exactly the experiments of the same
        :attr:`ExpectedRun.identity` (never another backbone's or schedule's)."""
        return (self.dataset, self.init, self.method, self.model, self.backbone, self.schedule)

    @property
    def tolerance(self) -> float:
        """Half a unit in the last published digit: 37.1 stands for anything in [37.05, 37.15]."""
        if self.decimals is not None:
            return 0.5 * 10.0**-self.decimals
        exponent = Decimal(repr(float(self.value))).normalize().as_tuple().exponent
        return 0.5 * 10.0 ** min(int(exponent), 0)


def _check_detector_label(entry: PublishedEntry, where: str) -> None:
    """The ``detector`` label is what a reader sees, the fields are what is matched: they must
    say the same, or a "1x" number could be keyed to a model of another schedule."""
    words = entry.detector.split()
    schedules = [w for w in words if re.match(names.SCHEDULE_PATTERN, w)]
    if entry.backbone not in words or schedules != ([entry.schedule] if entry.schedule else []):
        raise InputError(
            f"{where}: detector {entry.detector!r} does not name the entry's backbone {entry.backbone!r} "
            f"and schedule {entry.schedule!r} (set `backbone` / `schedule`, default {names.DEFAULT_BACKBONE} / none)"
        )


def load_published(path: str | os.PathLike) -> list[PublishedEntry]:
    """Read and validate ``published.yaml`` (a ``published:`` list of entries).

    Raises:
        InputError: missing or malformed file, an entry with a missing/mistyped field, or two
            reproducible entries for the same model (dataset/init/method/model/backbone/schedule)
            and metric (ambiguous comparison).
    """
    path = Path(path)
    data = read_yaml(path, "published numbers file", missing_hint=" (pass --published)")
    if not isinstance(data, dict) or not isinstance(data.get("published"), list):
        raise InputError(f"{path}: expected a mapping with a 'published' list")
    entries: list[PublishedEntry] = []
    keys: set[tuple] = set()
    for index, record in enumerate(data["published"]):
        where = f"{path}: published[{index}]"
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a mapping, got {type_name(record)}")
        value = record.get("value")
        if not is_number(value):
            raise InputError(f"{where}: 'value' must be a number, got {type_name(value)} {value!r}")
        reproducible = record.get("reproducible", True)
        if not isinstance(reproducible, bool):
            raise InputError(f"{where}: 'reproducible' must be true or false, got {reproducible!r}")
        note = record.get("note", "")
        if not isinstance(note, str):
            raise InputError(f"{where}: 'note' must be a string, got {type_name(note)}")
        entry = PublishedEntry(
            dataset=require_str(record, "dataset", where),
            init=require_str(record, "init", where),
            method=require_str(record, "method", where),
            detector=require_str(record, "detector", where),
            metric=require_str(record, "metric", where),
            value=float(value),
            source=require_str(record, "source", where),
            reproducible=reproducible,
            note=note,
            index=index,
            model=parse_model(record, where),
            **parse_variant(record, where),
            decimals=0 if isinstance(value, int) else max(0, -int(Decimal(repr(float(value))).as_tuple().exponent)),
        )
        check_metric(entry.metric, where)
        _check_detector_label(entry, where)
        key = (*entry.identity, entry.metric)
        if entry.reproducible:
            if key in keys:
                raise InputError(f"{where}: a second reproducible entry for {'/'.join(map(str, key))}")
            keys.add(key)
        entries.append(entry)
    return entries
