"""COCO evaluation as the project runs it (a dataset registered with ``register_coco_dataset`` and loaded
as the test loader loads it, the evaluator of ``configs/data/coco.py``) against pycocotools run
directly on the same json and the same detections, on a hand-made imperfect case: false positives
ranked above true ones, a box at IoU 0.6, a duplicate, a wrong class, a missed object, an image
without objects, and non-contiguous category ids listed out of order."""
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import detr_plus  # noqa: F401  (compat shims before detectron2)
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from detr_plus.data import register_coco_dataset

REPO = Path(__file__).resolve().parents[1]
# json category ids 7, 2, 5 (listed so): contiguous classes by sorted id: ant (2) 0, bee (5) 1, cat (7) 2.
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 2, "name": "ant"}, {"id": 5, "name": "bee"}]
JSON_ID = {0: 2, 1: 5, 2: 7}
IMAGES = {7: (160, 200), 3: (100, 100), 12: (80, 120)}  # image id: (height, width)
GT = [  # (image id, json category id, XYWH)
    (7, 2, [10, 10, 40, 30]),  # ant, medium
    (7, 7, [60, 40, 110, 100]),  # cat, large
    (7, 5, [150, 120, 20, 20]),  # bee, small
    (3, 5, [20, 20, 50, 50]),  # bee
    (3, 2, [5, 70, 20, 20]),  # ant, never detected
]
DETECTIONS = {  # image id: [(contiguous class, score, XYXY)]
    7: [(0, 0.95, [120, 5, 160, 35]),  # ant where there is none, ranked first
        (0, 0.90, [10, 10, 50, 40]),  # the ant, exact
        (2, 0.85, [60, 40, 126.5, 140]),  # the cat at IoU 66.5 / 110 = 0.605
        (1, 0.30, [150, 120, 170, 140]),  # the small bee, exact but ranked low
        (0, 0.20, [11, 11, 51, 41])],  # a duplicate of the ant
    3: [(1, 0.70, [22, 22, 72, 72]),  # the bee at IoU 0.855
        (2, 0.60, [5, 70, 25, 90])],  # the missed ant's box, as a cat
    12: [(1, 0.99, [10, 10, 40, 40]),  # bee on an empty image, above every true bee
         (2, 0.50, [0, 0, 60, 60])],
}
STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


@pytest.fixture
def coco_case(tmp_path):
    for image_id, (h, w) in IMAGES.items():
        Image.new("RGB", (w, h)).save(tmp_path / f"{image_id}.png")
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, (h, w) in IMAGES.items()],
        "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for n, (i, c, b) in enumerate(GT)],
        "categories": CATEGORIES,
    }
    json_file = tmp_path / "val.json"
    json_file.write_text(json.dumps(data))
    name = f"eval_case_{uuid.uuid4().hex[:8]}"
    register_coco_dataset(name, str(json_file), str(tmp_path))
    yield name, json_file
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def pycocotools_reference(json_file):
    """AP / AP50 / AP75 / APs / APm / APl and per-category AP (x 100) of DETECTIONS by pycocotools itself."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(json_file))
    results = [{"image_id": i, "category_id": JSON_ID[c], "score": s, "bbox": [x0, y0, x1 - x0, y1 - y0]}
               for i, dets in DETECTIONS.items() for c, s, (x0, y0, x1, y1) in dets]
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = dict(zip(STATS, (100 * v for v in ev.stats[:6])))
    for k, cat_id in enumerate(ev.params.catIds):
        precision = ev.eval["precision"][:, :, k, 0, -1]
        stats["AP-" + gt.cats[int(cat_id)]["name"]] = 100 * float(np.mean(precision[precision > -1]))
    return stats


def test_coco_evaluation_equals_pycocotools_on_a_hand_made_case(coco_case, tmp_path):
    """The project's evaluator on the model-style outputs (contiguous classes, XYXY boxes) gives every
    COCO number and every class's AP that pycocotools gives on the json with the json's own ids."""
    name, json_file = coco_case
    DatasetCatalog.get(name)  # as the test loader does: sets the json id <-> contiguous class maps
    assert MetadataCatalog.get(name).thing_classes == ["ant", "bee", "cat"]
    evaluator_cfg = LazyConfig.load(str(REPO / "configs" / "data" / "coco.py")).dataloader.evaluator
    evaluator_cfg.update(dataset_name=name, output_dir=str(tmp_path / "inference"))
    evaluator = instantiate(evaluator_cfg)
    evaluator.reset()
    for image_id, dets in DETECTIONS.items():
        instances = Instances(IMAGES[image_id])
        instances.pred_boxes = Boxes(torch.tensor([box for _, _, box in dets], dtype=torch.float32))
        instances.scores = torch.tensor([score for _, score, _ in dets])
        instances.pred_classes = torch.tensor([c for c, _, _ in dets])
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    got = evaluator.evaluate()["bbox"]

    expected = pycocotools_reference(json_file)
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    # The case is imperfect where it should be: IoU 0.6 counts at 0.5, not 0.75; false positives first.
    assert 0 < expected["AP"] < expected["AP50"] < 100 and expected["AP75"] < expected["AP50"]
    assert len({round(expected[f"AP-{c}"], 3) for c in ("ant", "bee", "cat")}) == 3  # a class mix-up shows
