"""detectron2 compatibility layer (detr_plus/compat.py): imports, patches and round trips."""
import importlib
import json
import os
import uuid

import numpy as np
import pytest
import torch

import detr_plus  # noqa: F401  (applies detr_plus.compat.patch_detectron2)
from detr_plus import compat


@pytest.mark.parametrize(
    "module",
    [
        "detectron2.layers",
        "detectron2.modeling",
        "detectron2.data",
        "detectron2.engine",
        "detectron2.evaluation",
        "detectron2.checkpoint",
    ],
)
def test_detectron2_imports(module):
    importlib.import_module(module)


def test_patch_is_idempotent_and_flag_is_bool():
    assert isinstance(compat.HAS_D2_EXTENSION, bool)
    compat.patch_detectron2()
    compat.patch_detectron2()


def test_missing_extension_stub():
    import detectron2._C as C

    if compat.HAS_D2_EXTENSION:
        assert not isinstance(C, compat._MissingExtension)
        return
    with pytest.raises(compat.MissingD2ExtensionError, match="without its C\\+\\+ extension"):
        C.nms_rotated
    assert not hasattr(C, "__path__")
    # default_setup() logs collect_env_info(), which calls into _C
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_pillow_linear_default():
    from detectron2.data import transforms as T

    img = np.zeros((20, 30, 3), dtype=np.uint8)
    assert T.ResizeTransform(20, 30, 10, 15).apply_image(img).shape == (10, 15, 3)
    assert T.ExtentTransform((0, 0, 10, 10), (5, 5)).apply_image(img).shape == (5, 5, 3)


def test_numpy_aliases():
    assert np.int is int or np.int is np.int_
    assert np.zeros(2, dtype=np.int).dtype.kind == "i"
    assert np.zeros(2).astype(np.bool).dtype == np.bool_
    assert np.float is float or np.float is np.float64


def test_checkpoint_round_trip_with_python_objects(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    model = torch.nn.Linear(3, 2)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save(
        "model_final", iteration=7, extra=[1, "a", 2.5], arr=np.arange(3)
    )
    model2 = torch.nn.Linear(3, 2)
    out = DetectionCheckpointer(model2, save_dir=str(tmp_path)).resume_or_load(
        str(tmp_path / "model_final.pth"), resume=True
    )
    assert out["iteration"] == 7 and out["extra"] == [1, "a", 2.5]
    np.testing.assert_array_equal(out["arr"], np.arange(3))
    assert torch.equal(model.weight, model2.weight)


def _register_tiny_coco(tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    boxes = {1: [10.0, 20.0, 30.0, 40.0], 2: [5.0, 5.0, 50.0, 25.0]}  # XYWH
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100} for i in boxes],
        "categories": [{"id": 1, "name": "shape"}],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, b in boxes.items()
        ],
    }
    json_file = tmp_path / "tiny_coco.json"
    json_file.write_text(json.dumps(coco))
    name = f"tiny_coco_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))
    DatasetCatalog.get(name)  # sets thing_dataset_id_to_contiguous_id, as training does
    return name, boxes


def _perfect_predictions(boxes):
    from detectron2.structures import Boxes, Instances

    inputs, outputs = [], []
    for image_id, (x, y, w, h) in boxes.items():
        inst = Instances((100, 100))
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h]]))
        inst.scores = torch.tensor([0.9])
        inst.pred_classes = torch.tensor([0])
        inputs.append({"image_id": image_id})
        outputs.append({"instances": inst})
    return inputs, outputs


@pytest.mark.parametrize("pass_flag", [False, True])
def test_coco_evaluator_perfect_predictions(tmp_path, pass_flag):
    from detectron2.evaluation import COCOEvaluator

    name, boxes = _register_tiny_coco(tmp_path)
    kwargs = {"use_fast_impl": compat.HAS_D2_EXTENSION} if pass_flag else {}
    evaluator = COCOEvaluator(name, output_dir=str(tmp_path / "eval"), **kwargs)
    evaluator.reset()
    evaluator.process(*_perfect_predictions(boxes))
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert os.path.isfile(tmp_path / "eval" / "coco_instances_results.json")
