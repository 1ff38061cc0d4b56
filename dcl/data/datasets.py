"""Datasets: the ``dcl data`` command and the detectron2 catalog registration.

``dcl data toy``                 write the synthetic COCO + Cityscapes datasets (``dcl.data.toydata``)
``dcl data cityscapes-to-coco``  Cityscapes gtFine -> COCO JSON (``dcl.data.cityscapes``)
``dcl data occlusion-subset``    the occluded images of a COCO GT (the toy COCO-OCC)
``dcl data check``               verify a dataset is in place before any job is submitted; say
                                 exactly what is missing, what to download and where to put it

``register_datasets(root)`` registers the pipeline's dataset names (docs/design.md, "Dataset
names") in detectron2's ``DatasetCatalog``/``MetadataCatalog``. Registration never touches the
files; loading a dataset whose files are missing raises ``InputError`` naming the file and the
command that creates it. detectron2 is imported only inside functions, so ``dcl data`` starts
without torch.
"""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from dcl import layout
from dcl.argtypes import fraction
from dcl.io import InputError, atomic_write_json
from dcl.layout import DATASET_SPECS, SPLITS, Dataset

__all__ = [
    "datasets_root",
    "toy_root",
    "check_dataset",
    "register_datasets",
    "add_arguments",
    "run",
]

_COCO_DOWNLOAD = (
    "COCO 2017 (https://cocodataset.org/#download): download\n"
    "{zips}"
    "  http://images.cocodataset.org/annotations/annotations_trainval2017.zip\n"
    "and unzip them into {coco}/ (they create train2017/, val2017/ and annotations/)."
)
_CITYSCAPES_DOWNLOAD = (
    "Cityscapes (https://www.cityscapes-dataset.com/downloads/, free account needed): download\n"
    "  gtFine_trainvaltest.zip (241 MB)  https://www.cityscapes-dataset.com/file-handling/?packageID=1\n"
    "  leftImg8bit_trainvaltest.zip (11 GB)  https://www.cityscapes-dataset.com/file-handling/?packageID=3\n"
    "(or `csDownload gtFine_trainvaltest.zip leftImg8bit_trainvaltest.zip` from cityscapesscripts)\n"
    "and unzip both into {cityscapes}/ (they create gtFine/ and leftImg8bit/)."
)


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """The datasets root: ``root``, else ``$DETECTRON2_DATASETS``, else ``datasets``."""
    if root is None:
        root = os.environ.get("DETECTRON2_DATASETS") or "datasets"
    return Path(os.path.expanduser(os.fspath(root)))


def toy_root(root: str | os.PathLike | None = None) -> Path:
    """The toy datasets root: ``$DCL_TOY_DATASETS``, else ``<datasets root>/toy``."""
    toy = os.environ.get("DCL_TOY_DATASETS")
    return Path(os.path.expanduser(toy)) if toy else datasets_root(root) / layout.TOY_DIR


def dataset_folder(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """A dataset's folder: under the toy root for a toy dataset, else under the datasets root."""
    spec = DATASET_SPECS[dataset]
    return (toy_root(root) if spec.toy else datasets_root(root)) / spec.folder


# ----------------------------------------------------------------------------------------------
# dcl data check


def _cityscapes_problems(base: Path, split: str) -> tuple[list[str], int]:
    """Missing pieces of one Cityscapes split (images, and the gtFine files of each image)."""
    image_dir, gt_dir = base / layout.cityscapes_images(split), base / layout.cityscapes_gt(split)
    problems = [f"{d}/ (directory) is missing" for d in (image_dir, gt_dir) if not d.is_dir()]
    if problems:
        return problems, 0
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        return [f"{image_dir}/ has no <city>/*_leftImg8bit.png images"], 0
    missing = []
    for image in images:
        stem = image.name[: -len("leftImg8bit.png")]
        for kind in ("gtFine_instanceIds.png", "gtFine_labelIds.png", "gtFine_polygons.json"):
            gt = gt_dir / image.parent.name / (stem + kind)
            if not gt.is_file():
                missing.append(str(gt))
    if missing:
        shown = "\n    ".join(missing[:3])
        return [f"{len(missing)} gtFine file(s) for the images in {image_dir}/ are missing, e.g.\n    {shown}"], len(
            images
        )
    return [], len(images)


def _file_problem(path: Path) -> list[str]:
    if not path.is_file():
        return [f"{path} (file) is missing"]
    if path.stat().st_size == 0:
        return [f"{path} is empty"]
    return []


def _image_dir_problem(path: Path, suffix: str) -> tuple[list[str], int]:
    """Problems with a flat image directory, and its number of images."""
    if not path.is_dir():
        return [f"{path}/ (directory) is missing"], 0
    with os.scandir(path) as entries:
        count = sum(e.name.endswith(suffix) for e in entries)
    return ([] if count else [f"{path}/ has no *{suffix} images"]), count


def check_dataset(
    dataset: str, root: str | os.PathLike | None = None, splits: Iterable[str] = SPLITS
) -> dict[str, Any]:
    """Verify that a dataset's files are in place (existing and non-empty).

    Args:
        dataset: a name of ``dcl.layout.DATASET_SPECS``.
        root: datasets root (see ``datasets_root``); toy datasets live under ``toy_root(root)``.
        splits: the splits to check.

    Returns:
        A small summary for the stamp file: dataset, root, splits, and what was found.

    Raises:
        InputError: listing every missing piece, what to download or run, and where it goes.
    """
    if dataset not in DATASET_SPECS:
        raise InputError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASET_SPECS)}")
    spec = DATASET_SPECS[dataset]
    splits = list(dict.fromkeys(splits))
    base_root = toy_root(root) if spec.toy else datasets_root(root)
    folder = dataset_folder(dataset, root)
    problems: list[str] = []
    found: dict[str, Any] = {}
    if spec.format == "coco":
        for split in splits:
            split_problems, count = _image_dir_problem(folder / spec.images(split), ".jpg")
            problems += split_problems + _file_problem(folder / spec.annotations(split))
            found[split] = {"images": count}
        if not spec.toy:
            zips = "".join(f"  http://images.cocodataset.org/zips/{spec.images(split)}.zip\n" for split in splits)
            remedy = _COCO_DOWNLOAD.format(coco=folder, zips=zips)
        else:
            remedy = f"Create the toy datasets with:\n  dcl data toy --out {base_root}"
    else:
        cityscapes = folder
        for split in splits:
            split_problems, count = _cityscapes_problems(cityscapes, split)
            problems += split_problems
            found[split] = {"images": count}
        if not spec.toy:
            remedy = _CITYSCAPES_DOWNLOAD.format(cityscapes=cityscapes)
        else:
            # The toy val set is evaluated from its COCO JSON (like the real one, which the
            # workflow converts after this check), and `dcl data toy` writes it.
            if "val" in splits:
                problems += _file_problem(cityscapes / spec.annotations("val"))
            remedy = (
                f"Create the toy datasets with:\n  dcl data toy --out {base_root}\n"
                f"(the COCO JSON alone: dcl data cityscapes-to-coco {cityscapes} --split val "
                f"-o {cityscapes / spec.annotations('val')})"
            )
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise InputError(f"dataset {dataset!r} under {base_root} is incomplete:\n{listing}\n{remedy}")
    return {"dataset": dataset, "root": str(base_root), "splits": splits, "found": found}


# ----------------------------------------------------------------------------------------------
# detectron2 registration


def _require(name: str, paths: list[tuple[Path, str]], remedy: str) -> None:
    for path, what in paths:
        if not path.exists():
            raise InputError(f"dataset {name!r}: {what} not found: {path}. {remedy}")


def _load_coco_json(name: str, json_file: Path, image_root: Path, remedy: str) -> list[dict]:
    _require(name, [(json_file, "annotation file"), (image_root, "image directory")], remedy)
    from detectron2.data.datasets.coco import load_coco_json

    return load_coco_json(str(json_file), str(image_root), name)


def _load_cityscapes(name: str, image_dir: Path, gt_dir: Path, remedy: str) -> list[dict]:
    _require(name, [(image_dir, "image directory"), (gt_dir, "gtFine directory")], remedy)
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances

    return load_cityscapes_instances(str(image_dir), str(gt_dir), from_json=True, to_polygons=True)


def _cityscapes_as_coco_entry(
    spec: Dataset, root: str | os.PathLike | None, remedy: str, cityscapes_meta: dict
) -> tuple[Callable, tuple, dict]:
    """Catalog entry (loader, loader arguments after the name, metadata) of a Cityscapes val
    split read from its COCO JSON, evaluated by detectron2's ``COCOEvaluator`` against that file."""
    from dcl.data.cityscapes import CATEGORIES as CITYSCAPES_CATEGORIES

    cityscapes = dataset_folder(spec.name, root)
    json_file = cityscapes / spec.annotations("val")
    image_root = cityscapes / spec.images("val")
    remedy = f"Create it with: dcl data cityscapes-to-coco {cityscapes} --split val -o {json_file} ({remedy})"
    return (
        _load_coco_json,
        (json_file, image_root, remedy),
        {
            "json_file": str(json_file),
            "image_root": str(image_root),
            "evaluator_type": "coco",
            "gt_dir": str(cityscapes / layout.cityscapes_gt("val")),
            "thing_classes": list(cityscapes_meta["thing_classes"]),
            "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(CITYSCAPES_CATEGORIES)},
        },
    )


def _coco_json_entry(
    spec: Dataset, split: str, root: str | os.PathLike | None, remedy: str, meta: dict
) -> tuple[Callable, tuple, dict]:
    """Catalog entry (loader, loader arguments after the name, metadata) of a COCO-format split."""
    coco = dataset_folder(spec.name, root)
    json_file, image_root = coco / spec.annotations(split), coco / spec.images(split)
    metadata = {"json_file": str(json_file), "image_root": str(image_root), "evaluator_type": "coco", **meta}
    return _load_coco_json, (json_file, image_root, remedy), metadata


def _cityscapes_raw_entry(
    spec: Dataset, split: str, root: str | os.PathLike | None, remedy: str, cityscapes_meta: dict
) -> tuple[Callable, tuple, dict]:
    """Catalog entry (loader, loader arguments after the name, metadata) of a Cityscapes split read
    by detectron2's Cityscapes loader."""
    cityscapes = dataset_folder(spec.name, root)
    image_dir, gt_dir = cityscapes / spec.images(split), cityscapes / layout.cityscapes_gt(split)
    metadata = {
        "image_dir": str(image_dir),
        "gt_dir": str(gt_dir),
        "evaluator_type": "cityscapes_instance",
        **cityscapes_meta,
    }
    return _load_cityscapes, (image_dir, gt_dir, remedy), metadata


def _catalog_entries(
    root: str | os.PathLike | None, base: Path, toy: Path, cityscapes_meta: dict, coco_meta: dict[bool, dict]
) -> dict[str, tuple[Callable, tuple, dict]]:
    """Every dataset split's catalog name -> (loader, loader arguments after the name, metadata),
    in ``DATASET_SPECS`` then ``SPLITS`` order. ``base`` and ``toy`` are the datasets and toy roots;
    ``coco_meta`` maps "is a toy dataset" to the COCO-format metadata."""
    toy_remedy = f"Create it with: dcl data toy --out {toy}"
    entries = {}
    for spec in DATASET_SPECS.values():
        check = f"dcl data check --dataset {spec.name} --root {base}"
        remedy = toy_remedy if spec.toy else f"See `{check}` for what to download."
        for split in SPLITS:
            if spec.format == "coco":
                entry = _coco_json_entry(spec, split, root, remedy, coco_meta[spec.toy])
            elif split == "train":
                entry = _cityscapes_raw_entry(spec, split, root, remedy, cityscapes_meta)
            else:  # val: from its COCO JSON (docs/design.md)
                entry = _cityscapes_as_coco_entry(
                    spec,
                    root,
                    f"or: dcl data toy --out {toy}" if spec.toy else f"raw data: `{check}`",
                    cityscapes_meta,
                )
            entries[spec.catalog_name(split)] = entry
    return entries


def _register_in_catalogs(entries: dict[str, tuple[Callable, tuple, dict]]) -> None:
    """Register each entry in detectron2's ``DatasetCatalog`` and ``MetadataCatalog``, replacing
    an earlier registration of the same name."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, (loader, loader_args, metadata) in entries.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        # functools.partial, not a lambda: picklable, and no late binding of loop variables.
        DatasetCatalog.register(name, functools.partial(loader, name, *loader_args))
        MetadataCatalog.get(name).set(**metadata)


def register_datasets(root: str | os.PathLike | None = None) -> list[str]:
    """Register the pipeline's datasets in detectron2's catalogs (idempotent: replaces earlier
    registrations of the same names, including detectron2's builtin ones).

    ``toy_coco_{train,val}`` and ``toy_cityscapes_val`` / ``cityscapes_fine_instance_seg_val``
    are COCO-JSON datasets (``evaluator_type "coco"``, ``json_file`` set so detectron2's
    ``COCOEvaluator`` evaluates against that very file); ``toy_cityscapes_train`` and
    ``cityscapes_fine_instance_seg_train`` use detectron2's Cityscapes loader and metadata;
    ``coco_2017_{train,val}`` are detectron2's builtin ones, under ``root``.

    Args:
        root: datasets root; default ``$DETECTRON2_DATASETS``, else ``datasets``. Toy datasets:
            ``$DCL_TOY_DATASETS``, else ``<root>/toy``.

    Returns:
        The registered names (``dcl.layout.REGISTERED_NAMES``).
    """
    import dcl.compat  # noqa: F401  (before detectron2)
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

    from dcl.data.cityscapes import CATEGORIES as CITYSCAPES_CATEGORIES
    from dcl.data.toydata import SHAPE_CLASSES

    base, toy = datasets_root(root), toy_root(root)
    cityscapes_meta = _get_builtin_metadata("cityscapes")
    if cityscapes_meta["thing_classes"] != [c["name"] for c in CITYSCAPES_CATEGORIES]:
        raise RuntimeError("detectron2's Cityscapes classes differ from cityscapesscripts' instance classes")
    coco_meta = {
        True: {
            "thing_classes": [c.name for c in SHAPE_CLASSES],
            "thing_dataset_id_to_contiguous_id": {c.dataset_id: i for i, c in enumerate(SHAPE_CLASSES)},
        },
        False: _get_builtin_metadata("coco"),
    }
    entries = _catalog_entries(root, base, toy, cityscapes_meta, coco_meta)
    _register_in_catalogs(entries)
    return list(entries)


# ----------------------------------------------------------------------------------------------
# CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _size(text: str) -> tuple[int, int]:
    from dcl.data.toydata import parse_size

    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_toy_parser(commands: argparse._SubParsersAction) -> None:
    """``dcl data toy``: write the synthetic datasets."""
    toy = commands.add_parser(
        "toy",
        help="write the synthetic COCO + Cityscapes datasets",
        description="Write the synthetic toy datasets: DIR/coco (COCO format, HxW images) and "
        "DIR/cityscapes (Cityscapes format, H x 2H images, real label ids). "
        "Deterministic: the same arguments give byte-identical files. DIR must be new, "
        "empty, or a previous toy dataset (it has a .dcl-toy.json marker).",
    )
    toy.add_argument("--out", required=True, metavar="DIR", help="output directory")
    toy.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    toy.add_argument(
        "--num-train", type=_positive_int, default=64, metavar="N", help="training images per format (default 64)"
    )
    toy.add_argument(
        "--num-val", type=_positive_int, default=16, metavar="M", help="validation images per format (default 16)"
    )
    toy.add_argument(
        "--size",
        type=_size,
        default=(128, 128),
        metavar="HxW",
        help="COCO image size (default 128x128); Cityscapes images are H x 2H",
    )


def _add_convert_parser(commands: argparse._SubParsersAction) -> None:
    """``dcl data cityscapes-to-coco``: Cityscapes gtFine to COCO JSON."""
    convert = commands.add_parser(
        "cityscapes-to-coco",
        help="convert Cityscapes gtFine annotations to COCO JSON",
        description="Convert ROOT/gtFine/SPLIT (Cityscapes layout) into a COCO instances JSON file "
        "(images sorted by path, ids 1..N; categories 1..8 in detectron2's order; "
        "group regions as iscrowd).",
    )
    convert.add_argument("root", metavar="ROOT", help="Cityscapes root (holds gtFine/ and leftImg8bit/)")
    convert.add_argument("--split", choices=SPLITS, default="val", help="split to convert (default val)")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.json", help="COCO JSON to write")
    convert.add_argument(
        "--segmentation",
        choices=("rle", "polygon"),
        default=None,
        help="segmentation encoding of the default style (default rle)",
    )
    convert.add_argument(
        "--style",
        choices=("default", "detectron"),
        default="default",
        help="default: exact masks, group regions as crowd; detectron: the file "
        "Detectron's tools/convert_cityscapes_to_coco.py wrote (the original "
        "error analysis' GT): external contours, no group regions, instances "
        "with a 1-2 pixel fragment dropped; same image and category ids",
    )


def _add_occlusion_subset_parser(commands: argparse._SubParsersAction) -> None:
    """``dcl data occlusion-subset``: the occluded images of a COCO GT."""
    subset = commands.add_parser(
        "occlusion-subset",
        help="the occluded images of a COCO GT file (a COCO-OCC-like subset)",
        description="Write the images of a COCO GT file in which two non-crowd instances' boxes "
        "overlap by at least --min-overlap of the smaller box, renumbered 1..N (the "
        "toy counterpart of COCO-OCC, instances_occ2017_new.json).",
    )
    subset.add_argument("annotations", metavar="GT.json", help="COCO GT file (e.g. the toy COCO val)")
    subset.add_argument("-o", "--output", required=True, metavar="OUT.json", help="COCO JSON to write")
    subset.add_argument(
        "--min-overlap", type=fraction, default=0.2, help="intersection / smaller box area (default %(default)s)"
    )


def _add_check_parser(commands: argparse._SubParsersAction) -> None:
    """``dcl data check``: verify a dataset is in place."""
    check = commands.add_parser(
        "check",
        help="verify a dataset is in place (what is missing, what to download, where)",
        description="Verify that a dataset's files exist and are non-empty. On failure, exit 1 with "
        "what is missing, what to download (or run) and where to put it.",
    )
    check.add_argument("--dataset", required=True, choices=tuple(DATASET_SPECS))
    check.add_argument(
        "--root",
        default=None,
        metavar="DATASETS_ROOT",
        help="datasets root (default $DETECTRON2_DATASETS, else ./datasets); toy "
        "datasets are in $DCL_TOY_DATASETS, else DATASETS_ROOT/toy",
    )
    check.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    check.add_argument(
        "--occlusion-subset",
        default=None,
        metavar="OCC.json",
        help="also check this occlusion subset of COCO val (COCO-OCC); absent is a note, not an error",
    )
    check.add_argument(
        "-o", "--output", default=None, metavar="STAMP", help="on success, write a small JSON stamp here (atomically)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dcl data`` subcommands: toy, cityscapes-to-coco, occlusion-subset, check."""
    commands = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    _add_toy_parser(commands)
    _add_convert_parser(commands)
    _add_occlusion_subset_parser(commands)
    _add_check_parser(commands)


def _run_toy(args: argparse.Namespace) -> int:
    from dcl.data.toydata import generate_toy_datasets

    marker = generate_toy_datasets(
        args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val, size=args.size
    )
    height, width = marker["size"]
    print(
        f"wrote toy datasets to {args.out} (seed {args.seed}; COCO {height}x{width}, Cityscapes {height}x{2 * height}):"
    )
    for dataset, splits in marker["counts"].items():
        for split, counts in splits.items():
            print(
                f"  {dataset}/{split}: {counts['images']} images, {counts['instances']} instances, "
                f"{counts['crowd_regions']} crowd regions"
            )
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from dcl.data.cityscapes import cityscapes_to_coco

    if args.style == "detectron" and args.segmentation is not None:
        raise InputError("--segmentation applies to --style default only (the detectron style is polygons)")
    coco = cityscapes_to_coco(
        args.root, args.split, args.output, segmentation=args.segmentation or "rle", style=args.style
    )
    print(
        f"wrote {args.output} ({len(coco['images'])} images, {len(coco['annotations'])} annotations, "
        f"{args.style} style)"
    )
    return 0


def _run_occlusion_subset(args: argparse.Namespace) -> int:
    from dcl.data.coco import load_ground_truth, occlusion_subset

    subset = occlusion_subset(load_ground_truth(args.annotations), args.min_overlap)
    if not subset["images"]:
        raise InputError(f"{args.annotations}: no image has overlapping instances (--min-overlap {args.min_overlap})")
    atomic_write_json(args.output, subset, indent=None)
    print(f"wrote {args.output} ({len(subset['images'])} images, {len(subset['annotations'])} annotations)")
    return 0


def check_occlusion_subset(path: str | os.PathLike, val_gt: str | os.PathLike) -> dict[str, Any]:
    """The COCO-OCC subset's state for the stamp: absent (a note, not an error), or valid (a COCO GT
    whose every image is in the val GT by file name).

    Raises:
        InputError: the file is there but unreadable, not COCO, or has images val lacks.
    """
    path = Path(path)
    if not path.exists():
        return {"path": str(path), "present": False}
    from dcl.data.coco import load_ground_truth, map_predictions_by_file_name

    subset = load_ground_truth(path)
    map_predictions_by_file_name([], load_ground_truth(val_gt, need_segmentation=False), subset)
    return {"path": str(path), "present": True, "images": len(subset.images)}


def _run_check(args: argparse.Namespace) -> int:
    summary = check_dataset(args.dataset, args.root, args.splits)
    if args.occlusion_subset:
        if not DATASET_SPECS[args.dataset].occlusion:
            raise InputError("--occlusion-subset is a subset of COCO val: use it with --dataset coco or toy_coco")
        val_gt = dataset_folder(args.dataset, args.root) / DATASET_SPECS[args.dataset].annotations("val")
        summary["occlusion_subset"] = check_occlusion_subset(args.occlusion_subset, val_gt)
        if not summary["occlusion_subset"]["present"]:
            print(
                f"note: no occlusion subset (COCO-OCC) at {args.occlusion_subset}: COCO runs are evaluated on val only"
            )
    if args.output:
        atomic_write_json(args.output, summary)
    print(f"dataset {args.dataset!r} is in place under {summary['root']} (splits: {', '.join(summary['splits'])})")
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {
        "toy": _run_toy,
        "cityscapes-to-coco": _run_convert,
        "occlusion-subset": _run_occlusion_subset,
        "check": _run_check,
    }
    return handlers[args.data_command](args)
