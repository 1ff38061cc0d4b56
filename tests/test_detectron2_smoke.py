"""Mask R-CNN R50-FPN trains and infers on CPU with the installed detectron2 + dcl.compat.

Catches a detectron2 / numpy / Pillow / torch upgrade that breaks the stack we build on. Uses
detectron2 only (no dcl model code), on a few generated images.
"""

import numpy as np
import pytest
from PIL import Image, ImageDraw

import dcl.compat  # noqa: F401  (before detectron2)

pytestmark = pytest.mark.e2e

SIZE = 256


def make_dataset(directory, count=2):
    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        image = Image.fromarray(rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        annotations = []
        for category in range(2):
            x0, y0 = (int(v) for v in rng.integers(20, 140, 2))
            w, h = (int(v) for v in rng.integers(40, 100, 2))
            polygon = [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]
            draw.polygon(polygon, fill=(200, 40, 40) if category == 0 else (40, 200, 40))
            annotations.append(
                {
                    "bbox": [x0, y0, w, h],
                    "bbox_mode": 1,
                    "category_id": category,
                    "segmentation": [polygon],
                    "iscrowd": 0,
                }
            )
        path = directory / f"{index}.jpg"
        image.save(path)
        records.append(
            {"file_name": str(path), "image_id": index, "height": SIZE, "width": SIZE, "annotations": annotations}
        )
    return records


def test_mask_rcnn_r50_fpn_trains_and_infers_on_cpu(tmp_path):
    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import (
        DatasetCatalog,
        MetadataCatalog,
        build_detection_test_loader,
        build_detection_train_loader,
    )
    from detectron2.engine import SimpleTrainer
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from detectron2.modeling import build_model
    from detectron2.structures import BoxMode

    records = make_dataset(tmp_path)
    for r in records:
        for a in r["annotations"]:
            a["bbox_mode"] = BoxMode.XYWH_ABS
    name = "dcl_smoke_r50"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["red", "green"])

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            "",
            # Random init: frozen BN statistics make R50 diverge within a few iterations.
            "MODEL.RESNETS.NORM",
            "BN",
            "MODEL.BACKBONE.FREEZE_AT",
            "0",
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "2",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
            "64",
            "INPUT.MIN_SIZE_TRAIN",
            f"({SIZE},)",
            "INPUT.MAX_SIZE_TRAIN",
            str(SIZE),
            "INPUT.MIN_SIZE_TEST",
            str(SIZE),
            "INPUT.MAX_SIZE_TEST",
            str(SIZE),
            "DATASETS.TRAIN",
            f"('{name}',)",
            "DATASETS.TEST",
            f"('{name}',)",
            "DATALOADER.NUM_WORKERS",
            "0",
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.BASE_LR",
            "0.001",
            # Every detection counts: three iterations from scratch may score none above 0.05, and
            # then the evaluator would see no masks to score.
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "OUTPUT_DIR",
            str(tmp_path / "out"),
        ]
    )
    # The data order comes from numpy's global generator (detectron2's shared_random_seed): seeded
    # here, so what earlier tests drew from it does not change this run.
    np.random.seed(0)
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    trainer = SimpleTrainer(model, build_detection_train_loader(cfg), optimizer)
    losses = []
    trainer.register_hooks([])
    original_step = trainer.run_step

    def recording_step():
        original_step()
        losses.append(trainer.storage.history("total_loss").latest())

    trainer.run_step = recording_step
    trainer.train(0, 3)
    assert len(losses) == 3 and all(np.isfinite(losses)), losses
    assert {"loss_mask", "loss_cls", "loss_box_reg", "loss_rpn_cls"} <= set(trainer.storage.histories())

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": torch.zeros(3, SIZE, SIZE), "height": SIZE, "width": SIZE}])
    instances = outputs[0]["instances"]
    assert instances.pred_masks.shape[1:] == (SIZE, SIZE)

    # detectron2's COCO evaluator on its pure-Python path, as `dcl train` uses it without _C.
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), use_fast_impl=False)
    results = inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)
    assert "segm" in results and "AP" in results["segm"]
    assert (tmp_path / "eval" / "coco_instances_results.json").exists()
