"""Tests for detr_plus.data: synthetic shapes, registration, validation, DETR mapper."""
import contextlib
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import detr_plus  # noqa: F401  (compat shims before detectron2)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

import detr_plus.data as D
from detr_plus.data import shapes
from detr_plus.data.mapper import DetrDatasetMapper, RandomChoice

W = H = 128


@pytest.fixture
def registered():
    """Collect dataset names registered by a test and remove them afterwards."""
    names = []
    yield names
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)
        shapes._SHAPES_DATASETS.pop(n, None)


@contextlib.contextmanager
def capture_log(name):
    records = []

    class _H(logging.Handler):
        def emit(self, record):
            records.append(record)

    lg = logging.getLogger(name)
    h = _H(level=logging.WARNING)
    lg.addHandler(h)
    try:
        yield records
    finally:
        lg.removeHandler(h)


def _read_split(root, split):
    image_root, json_file = shapes.shapes_dataset_paths(str(root), split)
    with open(json_file, "rb") as f:
        raw = f.read()
    images = {}
    for name in sorted(os.listdir(image_root)):
        with open(os.path.join(image_root, name), "rb") as f:
            images[name] = f.read()
    return raw, images


# ----------------------------------------------------------------------------- generation
def test_generation_deterministic(tmp_path):
    shapes.generate_shapes_dataset(tmp_path / "a", "s", 100, seed=5, progress=False)
    shapes.generate_shapes_dataset(tmp_path / "b", "s", 100, seed=5, progress=False)
    shapes.generate_shapes_dataset(tmp_path / "c", "s", 100, seed=6, progress=False)
    ja, ia = _read_split(tmp_path / "a", "s")
    jb, ib = _read_split(tmp_path / "b", "s")
    jc, ic = _read_split(tmp_path / "c", "s")
    assert ja == jb and ia == ib
    assert len(ia) == 100
    assert ja != jc and ia != ic

    data = json.loads(ja)
    assert data["categories"] == [
        {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(shapes.SHAPES_CLASSES)
    ]
    assert data["info"]["params"]["seed"] == 5 and data["info"]["params"]["num_images"] == 100
    assert len(data["images"]) == 100
    per_image = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
        assert 0 < a["area"] <= w * h
        assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= len(shapes.SHAPES_CLASSES)
    n_empty = sum(1 for im in data["images"] if im["id"] not in per_image)
    assert 1 <= n_empty <= 20  # ~5% empty images
    assert max(len(v) for v in per_image.values()) <= 8
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


def test_generation_skips_and_regenerates(tmp_path):
    jf = shapes.generate_shapes_dataset(tmp_path, "s", 5, seed=1, progress=False)
    mtime = os.stat(jf).st_mtime_ns
    shapes.generate_shapes_dataset(tmp_path, "s", 5, seed=1, progress=False)
    assert os.stat(jf).st_mtime_ns == mtime  # complete -> skipped
    # An interrupted run (image dir present, json missing, temp dir left) is not complete.
    os.remove(jf)
    os.makedirs(tmp_path / ".tmp-s-999999" / "s")
    assert not shapes.is_shapes_dataset_complete(tmp_path, "s", 5, 1)
    shapes.generate_shapes_dataset(tmp_path, "s", 5, seed=1, progress=False)
    assert shapes.is_shapes_dataset_complete(tmp_path, "s", 5, 1)
    # Other parameters -> regenerated with the new parameters.
    shapes.generate_shapes_dataset(tmp_path, "s", 7, seed=1, progress=False)
    assert shapes.is_shapes_dataset_complete(tmp_path, "s", 7, 1)
    assert len(os.listdir(tmp_path / "s")) == 7
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_square_box_is_painted_extent():
    sq = shapes.SHAPES_CLASSES.index("square")
    mask = shapes._shape_mask(sq, 10, 5, 7, H, W, np.random.default_rng(0))
    assert shapes._mask_box(mask) == (5, 7, 10, 10) and mask.sum() == 100


def test_boxes_tight_on_flat_background(monkeypatch):
    """With a flat black background and no noise, boxes must equal the painted extents."""
    monkeypatch.setattr(shapes, "_background", lambda rng, h, w: (np.zeros((h, w, 3), np.float32), np.zeros(3)))
    monkeypatch.setattr(shapes, "_shape_color", lambda rng, base: np.full(3, 255.0))
    monkeypatch.setattr(shapes, "_NOISE", 0)
    singles = 0
    for i in range(60):
        img, objs = shapes.render_shapes_image(np.random.default_rng([3, i]), W)
        painted = img.any(axis=2)
        if not objs:
            assert not painted.any()
            continue
        covered = np.zeros_like(painted)
        for o in objs:
            x, y, w, h = o["bbox"]
            covered[y : y + h, x : x + w] = True
        assert not (painted & ~covered).any()  # every painted pixel is inside a box
        if len(objs) == 1:
            singles += 1
            assert shapes._mask_box(painted) == tuple(objs[0]["bbox"])
            assert painted.sum() == objs[0]["area"]
    assert singles >= 3


# ----------------------------------------------------------------------------- registration
def test_register_shapes(tmp_path, registered):
    splits = {"shapes_ttrain": 12, "shapes_tval": 5}
    registered.extend(splits)
    names = D.register_shapes(root=str(tmp_path), splits=splits)
    assert names == list(splits)
    D.register_shapes(root=str(tmp_path), splits=splits)  # idempotent
    meta = MetadataCatalog.get("shapes_tval")
    assert meta.thing_classes == list(shapes.SHAPES_CLASSES)
    assert meta.evaluator_type == "coco"
    assert meta.json_file == str(tmp_path / "annotations" / "instances_tval.json")
    assert not os.path.exists(meta.json_file)  # lazy
    D.check_dataset_available("shapes_tval")  # generates (needed before COCOEvaluator)
    assert os.path.isfile(meta.json_file)
    dicts = DatasetCatalog.get("shapes_ttrain")
    assert len(dicts) == 12 and len(DatasetCatalog.get("shapes_tval")) == 5
    d = dicts[0]
    assert set(d) >= {"file_name", "height", "width", "image_id", "annotations"}
    assert os.path.isfile(d["file_name"]) and d["height"] == H
    for a in (a for d in dicts for a in d["annotations"]):
        assert 0 <= a["category_id"] < len(shapes.SHAPES_CLASSES)  # contiguous ids
        assert a["bbox_mode"] == BoxMode.XYWH_ABS
    # Re-registering with other parameters replaces the registration.
    D.register_shapes(root=str(tmp_path), splits={"shapes_tval": 3})
    assert len(DatasetCatalog.get("shapes_tval")) == 3


def test_register_all_idempotent():
    D.register_all()
    D.register_all()
    assert {"shapes_train", "shapes_val", "coco_2017_val"} <= set(DatasetCatalog.list())
    assert MetadataCatalog.get("shapes_train").thing_classes == list(shapes.SHAPES_CLASSES)
    # builtin COCO 2017 detection splits use the validating loader
    func = DatasetCatalog["coco_2017_val"]
    assert getattr(func, "func", None) is D.load_coco_json_checked
    meta = MetadataCatalog.get("coco_2017_val")
    if not os.path.isfile(meta.json_file):
        with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
            DatasetCatalog.get("coco_2017_val")


# ----------------------------------------------------------------------------- validation
def _write_coco(tmp_path, annotations, n_images=2):
    image_root = tmp_path / "imgs"
    image_root.mkdir(exist_ok=True)
    data = {
        "images": [{"id": i + 1, "file_name": f"im{i}.jpg", "height": 50, "width": 60} for i in range(n_images)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
    }
    for image in data["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(image_root / image["file_name"])
    jf = tmp_path / "ann.json"
    jf.write_text(json.dumps(data))
    return str(jf), str(image_root)


def _ann(aid, image_id, bbox, cat=1):
    return {"id": aid, "image_id": image_id, "bbox": bbox, "category_id": cat, "area": 1.0, "iscrowd": 0}


def test_degenerate_boxes_dropped(tmp_path, registered):
    anns = [_ann(10, 1, [1, 1, 0, 5]), _ann(11, 1, [1, 1, 5, 5], 3), _ann(12, 1, [2, 2, 4, -3])]
    jf, root = _write_coco(tmp_path, anns, n_images=2)
    registered.append("t_degenerate")
    D.register_coco_dataset("t_degenerate", jf, root)
    with capture_log("detr_plus.data.checks") as recs:
        dicts = DatasetCatalog.get("t_degenerate")
    assert len(dicts) == 2  # image without annotations kept
    assert [a["id"] for a in dicts[0]["annotations"]] == [11]
    assert dicts[0]["annotations"][0]["category_id"] == 1  # contiguous id of category 3
    assert dicts[1]["annotations"] == []
    msg = "\n".join(r.getMessage() for r in recs)
    assert "2 annotation(s) dropped: zero / negative box width or height" in msg and "id=10 " in msg and "im0.jpg" in msg


def test_unknown_category_raises(tmp_path, registered):
    anns = [_ann(1, 1, [1, 1, 5, 5]), _ann(77, 2, [1, 1, 5, 5], cat=9)]
    jf, root = _write_coco(tmp_path, anns)
    registered.append("t_badcat")
    D.register_coco_dataset("t_badcat", jf, root)
    with pytest.raises(ValueError) as e:
        DatasetCatalog.get("t_badcat")
    msg = str(e.value)
    assert jf in msg and "id=77" in msg and "im1.jpg" in msg and "category_id=9" in msg


def test_missing_coco_raises(tmp_path, registered):
    coco = tmp_path / "coco"
    registered.append("t_missing_coco")
    D.register_coco_dataset(
        "t_missing_coco", str(coco / "annotations" / "instances_val2017.json"), str(coco / "val2017")
    )
    for fn in (lambda: D.check_dataset_available("t_missing_coco"), lambda: DatasetCatalog.get("t_missing_coco")):
        with pytest.raises(FileNotFoundError) as e:
            fn()
        msg = str(e.value)
        assert "instances_val2017.json" in msg and "DETECTRON2_DATASETS" in msg and "train2017" in msg
    meta = MetadataCatalog.get("coco_2017_val")
    if not os.path.isfile(meta.json_file):
        with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
            D.check_dataset_available("coco_2017_val")
    with pytest.raises(KeyError):
        D.check_dataset_available("no_such_dataset_xyz")


# ----------------------------------------------------------------------------- mapper
@pytest.fixture(scope="module")
def shape_dicts(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    shapes.generate_shapes_dataset(root, "m", 16, seed=11, progress=False)
    image_root, jf = shapes.shapes_dataset_paths(str(root), "m")
    return D.load_coco_json_checked(jf, image_root, None)


def _boxes_through(transforms, boxes, classes):
    """Hand-applied geometry of a detectron2 ``TransformList`` to XYXY ``boxes`` (n, 4): a flip mirrors
    x in the current width, a crop shifts by its origin, a resize scales by new / old size; then the
    boxes are clipped to the final image and those left without area dropped (with their classes)."""
    boxes = boxes.astype(np.float64).copy()
    h = w = None
    for t in transforms.transforms:
        if isinstance(t, T.HFlipTransform):
            boxes[:, [0, 2]] = t.width - boxes[:, [2, 0]]
        elif isinstance(t, T.CropTransform):
            boxes -= [t.x0, t.y0, t.x0, t.y0]
            h, w = t.h, t.w
        elif isinstance(t, T.ResizeTransform):
            boxes *= [t.new_w / t.w, t.new_h / t.h, t.new_w / t.w, t.new_h / t.h]
            h, w = t.new_h, t.new_w
        else:
            assert isinstance(t, T.NoOpTransform), t
    boxes = np.clip(boxes, 0, [w, h, w, h])
    keep = (boxes[:, 2] - boxes[:, 0] > 1e-5) & (boxes[:, 3] - boxes[:, 1] > 1e-5)
    return boxes[keep], np.asarray(classes)[keep], (h, w)


def _with_float_boxes(d):
    return {**d, "annotations": [{**a, "bbox": [float(v) for v in a["bbox"]]} for a in d["annotations"]]}


def _check_mapper_train(dicts):
    aug = D.build_detr_train_augmentation(
        min_sizes=(96, 112, 128), max_size=160, crop_sizes=(96, 112, 128), crop_range=(80, 112)
    )
    mapper = DetrDatasetMapper(is_train=True, augmentations=aug)
    seen = {"flip": 0, "crop": 0, "dropped": 0, "resized": 0}
    n_boxes = 0
    for i, d in enumerate(dicts * 3):
        np.random.seed(i)
        out = mapper(d)
        np.random.seed(i)  # the same draws again, outside the mapper
        original = D.read_image_checked(d["file_name"])
        aug_input = T.AugInput(original)
        transforms = T.AugmentationList(aug)(aug_input)
        boxes = np.stack([_xyxy(a) for a in d["annotations"]]) if d["annotations"] else np.zeros((0, 4))
        classes = [a["category_id"] for a in d["annotations"]]
        expected_boxes, expected_classes, (h, w) = _boxes_through(transforms, boxes, classes)

        img = out["image"]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, h, w)
        assert np.array_equal(img.numpy().transpose(1, 2, 0), transforms.apply_image(original))
        assert (out["height"], out["width"]) == (H, W)
        assert out["image_id"] == d["image_id"] and out["file_name"] == d["file_name"]
        inst = out["instances"]
        assert inst.image_size == (h, w)
        np.testing.assert_allclose(inst.gt_boxes.tensor.numpy(), expected_boxes, rtol=0, atol=1e-3)
        assert inst.gt_classes.tolist() == expected_classes.tolist() and inst.gt_classes.dtype == torch.int64
        assert "annotations" not in out
        kinds = {type(t) for t in transforms.transforms}
        seen["flip"] += T.HFlipTransform in kinds
        seen["crop"] += T.CropTransform in kinds
        seen["resized"] += (h, w) != (H, W)
        seen["dropped"] += len(expected_boxes) < len(boxes)
        n_boxes += len(inst)
    assert n_boxes > 0 and all(seen.values()), seen  # flips, crops, resizes and boxes cropped away all occur
    assert "image" not in d and "annotations" in d  # input dict untouched


def test_mapper_train(shape_dicts):
    """The shapes config's training augmentation on float json boxes (as COCO writes them): every
    image's boxes equal the augmentation's own transforms (drawn again from the same seed) applied by
    hand to the annotated boxes (flip, crop, resize, then clip and drop empty ones), classes kept with
    their boxes; the image is those transforms applied to the file's pixels, at their output size."""
    _check_mapper_train([_with_float_boxes(d) for d in shape_dicts])


def test_mapper_train_integer_json_boxes(shape_dicts):
    """The same as ``test_mapper_train`` with the boxes exactly as the shapes json holds them (ints)."""
    assert all(isinstance(v, int) for d in shape_dicts for a in d["annotations"] for v in a["bbox"])
    _check_mapper_train(shape_dicts)


def _xyxy(ann):
    return np.array(BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS), dtype=np.float32)


def test_mapper_flip(shape_dicts):
    d = next(d for d in shape_dicts if d["annotations"])
    orig = np.stack([_xyxy(a) for a in d["annotations"]])
    mirrored = orig[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1]) + np.array([W, 0, W, 0])
    # Identity sizes: only the random flip changes the boxes.
    aug = D.build_detr_train_augmentation(min_sizes=(128,), max_size=128, crop_sizes=(128,), crop_range=(128, 128))
    mapper = DetrDatasetMapper(True, aug)
    seen = set()
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(d)
        boxes = out["instances"].gt_boxes.tensor.numpy()
        if np.allclose(boxes, orig):
            seen.add("same")
        else:
            assert np.allclose(boxes, mirrored)
            img = out["image"].numpy()
            ref = DetrDatasetMapper(False, [])(d)["image"].numpy()
            assert np.array_equal(img, ref[:, :, ::-1])
            seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_mapper_crop_filters_empty(shape_dicts):
    d = dict(shape_dicts[0])
    d["annotations"] = [
        {"bbox": [100, 100, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0},
        {"bbox": [50, 10, 30, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 0},
        {"bbox": [0, 0, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3, "iscrowd": 1},
    ]
    out = DetrDatasetMapper(True, [T.CropTransform(0, 0, 64, 64)])(d)
    inst = out["instances"]
    assert out["image"].shape == (3, 64, 64)
    assert inst.gt_classes.tolist() == [2]  # outside box removed, crowd removed
    assert inst.gt_boxes.tensor.tolist() == [[50.0, 10.0, 64.0, 30.0]]  # clipped


def test_mapper_empty_image(shape_dicts):
    d = dict(shape_dicts[0])
    d["annotations"] = []
    inst = DetrDatasetMapper(True, [])(d)["instances"]
    assert len(inst) == 0 and inst.gt_boxes.tensor.shape == (0, 4)


def test_mapper_test_mode(shape_dicts):
    mapper = DetrDatasetMapper(False, D.build_detr_test_augmentation(min_size=96, max_size=160))
    out = mapper(shape_dicts[0])
    assert "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, 96, 96) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (H, W)


def test_mapper_bad_image_files(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"this is not a png" * 10)
    mapper = DetrDatasetMapper(False, [])
    with pytest.raises(RuntimeError, match="corrupt.png"):
        mapper({"file_name": str(bad), "image_id": 1})
    missing = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        mapper({"file_name": str(missing), "image_id": 2})


def test_random_choice():
    a = T.ResizeShortestEdge([32], sample_style="choice")
    b = T.ResizeShortestEdge([64], sample_style="choice")
    img = np.zeros((16, 16, 3), np.uint8)
    inp = T.AugInput(img.copy())
    RandomChoice([a, b], probs=[0, 1])(inp)
    assert inp.image.shape[:2] == (64, 64)
    np.random.seed(0)
    sizes = set()
    for _ in range(20):
        inp = T.AugInput(img.copy())
        T.AugmentationList([RandomChoice([a, b])])(inp)
        sizes.add(inp.image.shape[0])
    assert sizes == {32, 64}
    assert "RandomChoice" in repr(RandomChoice([a, b]))
