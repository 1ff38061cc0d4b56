"""Tests of ``dcl data`` (check, cityscapes-to-coco) and of ``register_datasets``: dataset roots,
what `check` reports, registration names and metadata, lazy loading with clear errors, and
detectron2's COCOEvaluator scoring ground truth as perfect through the registered metadata.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from dcl.cli import main
from dcl.data.datasets import check_dataset, datasets_root, register_datasets, toy_root
from dcl.layout import REGISTERED_NAMES
from dcl.io import InputError
from dcl.data.toydata import generate_toy_datasets

CITYSCAPES_THINGS = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    generate_toy_datasets(out, seed=0, num_train=2, num_val=3)
    return out


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    monkeypatch.delenv("DCL_TOY_DATASETS", raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------------------------
# Roots


def test_roots_follow_the_environment(clean_env, tmp_path):
    assert datasets_root() == Path("datasets")
    assert toy_root() == Path("datasets") / "toy"
    clean_env.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    assert datasets_root() == tmp_path / "d2"
    assert toy_root() == tmp_path / "d2" / "toy"
    assert datasets_root(tmp_path / "arg") == tmp_path / "arg"
    clean_env.setenv("DCL_TOY_DATASETS", str(tmp_path / "toys"))
    assert toy_root(tmp_path / "arg") == tmp_path / "toys"


# ----------------------------------------------------------------------------------------------
# dcl data check


def test_check_missing_coco_says_what_and_where(clean_env, tmp_path, capsys):
    stamp = tmp_path / "stamp.json"
    assert (
        main(["data", "check", "--dataset", "coco", "--root", str(tmp_path), "--splits", "val", "-o", str(stamp)]) == 1
    )
    error = capsys.readouterr().err
    assert error.startswith("dcl data: error: dataset 'coco'")
    assert f"{tmp_path}/coco/val2017/ (directory) is missing" in error
    assert f"{tmp_path}/coco/annotations/instances_val2017.json (file) is missing" in error
    assert "http://images.cocodataset.org/zips/val2017.zip" in error
    assert "http://images.cocodataset.org/annotations/annotations_trainval2017.zip" in error
    assert "train2017.zip" not in error  # only what the requested splits need
    assert f"unzip them into {tmp_path}/coco/" in error
    assert not stamp.exists()


def test_check_coco_empty_files_and_success(clean_env, tmp_path):
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_val2017.json").write_text("")
    with pytest.raises(InputError) as error:
        check_dataset("coco", tmp_path, ["val"])
    assert f"{coco}/val2017/ has no *.jpg images" in str(error.value)
    assert f"{coco}/annotations/instances_val2017.json is empty" in str(error.value)
    Image.new("RGB", (4, 4)).save(coco / "val2017" / "000000000001.jpg")
    (coco / "annotations" / "instances_val2017.json").write_text("{}")
    clean_env.setenv("DETECTRON2_DATASETS", str(tmp_path))  # --root defaults to it
    stamp = tmp_path / "out" / "stamp.json"
    assert main(["data", "check", "--dataset", "coco", "--splits", "val", "-o", str(stamp)]) == 0
    assert json.loads(stamp.read_text()) == {
        "dataset": "coco",
        "root": str(tmp_path),
        "splits": ["val"],
        "found": {"val": {"images": 1}},
    }


def test_check_cityscapes_lists_missing_gtfine_files(clean_env, tmp_path, toy):
    root = tmp_path / "datasets"
    with pytest.raises(InputError) as error:
        check_dataset("cityscapes", root)
    message = str(error.value)
    for missing in ("leftImg8bit/train/", "gtFine/train/", "leftImg8bit/val/", "gtFine/val/"):
        assert f"{root}/cityscapes/{missing} (directory) is missing" in message
    assert "gtFine_trainvaltest.zip" in message and "leftImg8bit_trainvaltest.zip" in message
    assert "https://www.cityscapes-dataset.com/" in message and f"unzip both into {root}/cityscapes/" in message

    shutil.copytree(toy / "cityscapes", root / "cityscapes")  # the real layout, same names
    summary = check_dataset("cityscapes", root)
    assert summary["found"] == {"train": {"images": 2}, "val": {"images": 3}}
    victim = sorted((root / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_instanceIds.png"))[1]
    victim.unlink()
    with pytest.raises(InputError) as error:
        check_dataset("cityscapes", root, ["val"])
    assert "1 gtFine file(s)" in str(error.value) and str(victim) in str(error.value)


def test_check_toy_datasets(clean_env, tmp_path, toy, capsys):
    clean_env.setenv("DCL_TOY_DATASETS", str(toy))
    assert main(["data", "check", "--dataset", "toy_coco"]) == 0
    assert check_dataset("toy_cityscapes", splits=["train"])["found"] == {"train": {"images": 2}}
    clean_env.setenv("DCL_TOY_DATASETS", str(tmp_path / "none"))
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "toy_coco", "--splits", "train"]) == 1
    error = capsys.readouterr().err
    assert f"{tmp_path}/none/coco/train/ (directory) is missing" in error
    assert f"dcl data toy --out {tmp_path}/none" in error


def test_check_argument_errors_exit_2(tmp_path):
    for argv in (
        ["data"],
        ["data", "check"],
        ["data", "check", "--dataset", "imagenet"],
        ["data", "check", "--dataset", "coco", "--splits", "test"],
        ["data", "frobnicate"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2


# ----------------------------------------------------------------------------------------------
# dcl data cityscapes-to-coco


def test_cityscapes_to_coco_delegates_to_dcl_cityscapes(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("dcl.data.cityscapes")

    def cityscapes_to_coco(root, split, output, segmentation="rle", style="default"):
        calls.append((root, split, output, segmentation, style))
        return {"images": [], "annotations": []}

    fake.cityscapes_to_coco = cityscapes_to_coco
    monkeypatch.setitem(sys.modules, "dcl.data.cityscapes", fake)
    out = str(tmp_path / "val.json")
    assert main(["data", "cityscapes-to-coco", "/data/cityscapes", "-o", out]) == 0
    assert (
        main(["data", "cityscapes-to-coco", "/data/cs", "--split", "train", "-o", out, "--segmentation", "polygon"])
        == 0
    )
    assert main(["data", "cityscapes-to-coco", "/data/cs", "--style", "detectron", "-o", out]) == 0
    assert calls == [
        ("/data/cityscapes", "val", out, "rle", "default"),
        ("/data/cs", "train", out, "polygon", "default"),
        ("/data/cs", "val", out, "rle", "detectron"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "cityscapes-to-coco", "/data/cs", "-o", out, "--segmentation", "mask"])
    assert exit_info.value.code == 2


# ----------------------------------------------------------------------------------------------
# register_datasets


def test_registration_names_metadata_and_idempotence(clean_env, tmp_path, toy):
    clean_env.setenv("DCL_TOY_DATASETS", str(toy))
    root = tmp_path / "datasets"
    assert register_datasets(root) == list(REGISTERED_NAMES)
    assert register_datasets(root) == list(REGISTERED_NAMES)  # twice: no "already registered"
    from detectron2.data import DatasetCatalog, MetadataCatalog

    assert set(REGISTERED_NAMES) <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("toy_coco_val")
    assert meta.thing_classes == ["disc", "triangle", "square"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert (meta.evaluator_type, meta.json_file, meta.image_root) == (
        "coco",
        str(toy / "coco" / "annotations" / "instances_val.json"),
        str(toy / "coco" / "val"),
    )
    meta = MetadataCatalog.get("toy_cityscapes_train")
    assert meta.evaluator_type == "cityscapes_instance" and meta.thing_classes == CITYSCAPES_THINGS
    assert meta.gt_dir == str(toy / "cityscapes" / "gtFine" / "train")
    for name, cityscapes in (
        ("toy_cityscapes_val", toy / "cityscapes"),
        ("cityscapes_fine_instance_seg_val", root / "cityscapes"),
    ):
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco" and meta.thing_classes == CITYSCAPES_THINGS
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(8)}
        assert meta.json_file == str(cityscapes / "annotations" / "instancesonly_filtered_gtFine_val.json")
        assert meta.image_root == str(cityscapes / "leftImg8bit" / "val")
    meta = MetadataCatalog.get("coco_2017_val")
    assert meta.json_file == str(root / "coco" / "annotations" / "instances_val2017.json")
    assert len(meta.thing_classes) == 80
    assert MetadataCatalog.get("cityscapes_fine_instance_seg_train").image_dir == str(
        root / "cityscapes" / "leftImg8bit" / "train"
    )


def test_registered_datasets_load(clean_env, toy):
    clean_env.setenv("DCL_TOY_DATASETS", str(toy))
    register_datasets()
    from detectron2.data import DatasetCatalog

    coco = json.loads((toy / "coco" / "annotations" / "instances_val.json").read_text())
    records = DatasetCatalog.get("toy_coco_val")
    assert len(records) == 3 and sum(len(r["annotations"]) for r in records) == len(coco["annotations"])
    assert {a["category_id"] for r in records for a in r["annotations"]} <= {0, 1, 2}
    train = DatasetCatalog.get("toy_cityscapes_train")
    assert len(train) == 2 and all(Path(r["file_name"]).is_file() for r in train)
    val = DatasetCatalog.get("toy_cityscapes_val")
    assert len(val) == 3 and all(Path(r["file_name"]).is_file() for r in val)
    # Contiguous ids 0..7 follow detectron2's Cityscapes order: check against the label PNGs.
    for record in val:
        gt = Path(
            record["file_name"].replace("leftImg8bit", "gtFine", 1).replace("leftImg8bit.png", "gtFine_labelIds.png")
        )
        label_ids = np.asarray(Image.open(gt))
        for annotation in record["annotations"]:
            mask = mask_util.decode(annotation["segmentation"]).astype(bool)
            names = {id2label[int(v)].name for v in np.unique(label_ids[mask])}
            assert names == {CITYSCAPES_THINGS[annotation["category_id"]]}


def test_registration_is_lazy_and_loading_says_what_is_missing(clean_env, tmp_path):
    root = tmp_path / "nothing-here"
    register_datasets(root)  # no files: registering must still work
    from detectron2.data import DatasetCatalog

    expectations = {
        "toy_coco_train": (f"{root}/toy/coco/annotations/instances_train.json", f"dcl data toy --out {root}/toy"),
        "toy_cityscapes_train": (f"{root}/toy/cityscapes/leftImg8bit/train", f"dcl data toy --out {root}/toy"),
        "toy_cityscapes_val": (
            f"{root}/toy/cityscapes/annotations/instancesonly_filtered_gtFine_val.json",
            f"dcl data cityscapes-to-coco {root}/toy/cityscapes --split val",
        ),
        "coco_2017_train": (f"{root}/coco/annotations/instances_train2017.json", "dcl data check --dataset coco"),
        "cityscapes_fine_instance_seg_train": (
            f"{root}/cityscapes/leftImg8bit/train",
            "dcl data check --dataset cityscapes",
        ),
        "cityscapes_fine_instance_seg_val": (
            f"{root}/cityscapes/annotations/instancesonly_filtered_gtFine_val.json",
            f"dcl data cityscapes-to-coco {root}/cityscapes --split val",
        ),
    }
    for name, (path, command) in expectations.items():
        with pytest.raises(InputError) as error:
            DatasetCatalog.get(name)
        message = str(error.value)
        assert name in message and f"not found: {path}" in message and command in message, message


def test_coco_evaluator_scores_ground_truth_as_perfect(clean_env, tmp_path, toy):
    """detectron2's COCOEvaluator evaluates against the registered json_file and maps contiguous
    ids back through the registered metadata: ground truth as predictions gives AP 100."""
    clean_env.setenv("DCL_TOY_DATASETS", str(toy))
    register_datasets()
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    evaluator = COCOEvaluator(
        "toy_coco_val", tasks=("segm",), distributed=False, output_dir=str(tmp_path), use_fast_impl=False
    )
    evaluator.reset()
    for record in DatasetCatalog.get("toy_coco_val"):
        height, width = record["height"], record["width"]
        annotations = [a for a in record["annotations"] if not a["iscrowd"]]
        masks = [
            mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], height, width)))
            for a in annotations
        ]
        instances = Instances((height, width))
        instances.pred_boxes = Boxes(
            torch.tensor(
                [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=torch.float32
            )
        )
        instances.scores = torch.ones(len(annotations))
        instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])
        instances.pred_masks = torch.from_numpy(np.stack(masks).astype(bool))
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    predictions = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert {p["category_id"] for p in predictions} == {1, 2, 3}  # dataset ids, not contiguous
