"""Own COCO-format data (issue #12): load-time annotation checks, unreadable images in training and
evaluation, ``configs/custom/*`` trained and evaluated through ``train_net.py`` with overrides only."""
import json
import logging
import math
import os

import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser

from detr_plus.data import generate_shapes_dataset, load_coco_json_checked
from detr_plus.data.custom import register_config_datasets
from detr_plus.data.loader import TooManyUnreadableImages
from detr_plus.data.shapes import SHAPES_CLASSES
from conftest import TINY_MODEL_OVERRIDES, load_train_net

pytestmark = pytest.mark.usefixtures("single_thread")
CUSTOM_TINY = "configs/custom/deformable_detr_tiny_custom.py"


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    """A user's COCO data as the project writes it: train/ (20 images), val/ (6), annotations/*.json."""
    root = tmp_path_factory.mktemp("own_data")
    train = generate_shapes_dataset(str(root), "train", 20, seed=3, progress=False)
    val = generate_shapes_dataset(str(root), "val", 6, seed=4, progress=False)
    return {"root": root, "train_json": train, "train_images": str(root / "train"),
            "val_json": val, "val_images": str(root / "val")}


def edited_json(shapes_coco, tmp_path, edit, split="train"):
    with open(shapes_coco[f"{split}_json"]) as f:
        data = json.load(f)
    edit(data)
    path = tmp_path / f"{split}_edited.json"
    path.write_text(json.dumps(data))  # NaN / Infinity literals, as Python's json (and pycocotools) read them
    return str(path)


def test_bad_annotations_are_counted_and_reported_once(shapes_coco, tmp_path, caplog):
    """NaN, infinite and zero-size boxes and a box wholly outside its image are dropped, a box partly
    outside is clipped; one warning per kind with its count and first offender."""
    def edit(data):
        anns = data["annotations"]
        anns[0]["bbox"][0] = math.nan
        anns[1]["bbox"][2] = math.inf
        anns[2]["bbox"][3] = 0
        anns[3]["bbox"][:2] = [-5.0, 2.0]  # 5 px left of the image
        anns[4]["bbox"][0] = 1000.0  # wholly right of the 128 px image
        anns[5]["bbox"][0] = 1200.0
    path = edited_json(shapes_coco, tmp_path, edit)
    with open(path) as f:
        raw = json.load(f)
    clipped = raw["annotations"][3]
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json_checked(path, shapes_coco["train_images"], "edited")
    kept = {a["id"]: a for d in dicts for a in d["annotations"]}
    dropped = {raw["annotations"][i]["id"] for i in (0, 1, 2, 4, 5)}
    assert not dropped & set(kept) and len(kept) == len(raw["annotations"]) - 5
    x, y, w, h = clipped["bbox"]
    assert kept[clipped["id"]]["bbox"] == [0.0, y, w - 5.0, h]
    messages = [r.getMessage() for r in caplog.records if "annotation(s)" in r.getMessage()]
    first = raw["annotations"]
    expected = {"non-finite": (2, first[0]["id"]), "zero / negative": (1, first[2]["id"]),
                "wholly outside": (2, first[4]["id"]), "partly outside": (1, first[3]["id"])}
    assert len(messages) == 4
    for words, (count, ann_id) in expected.items():
        (line,) = [m for m in messages if words in m]
        assert f": {count} annotation(s)" in line and f"first: annotation id={ann_id} " in line and "edited.json" in line


def test_duplicate_image_ids_and_missing_files_are_errors(shapes_coco, tmp_path):
    def duplicate(data):
        data["images"][5]["id"] = data["images"][2]["id"]
    path = edited_json(shapes_coco, tmp_path, duplicate)
    with open(path) as f:
        images = json.load(f)["images"]
    with pytest.raises(ValueError, match=f"image id {images[2]['id']} is used twice .*{images[2]['file_name']}.*{images[5]['file_name']}"):
        load_coco_json_checked(path, shapes_coco["train_images"], "duplicate")
    images_dir = tmp_path / "few_images"
    images_dir.mkdir()
    for image in images[:13]:  # 7 of the 20 files missing
        os.symlink(os.path.join(shapes_coco["train_images"], image["file_name"]), images_dir / image["file_name"])
    with pytest.raises(FileNotFoundError, match=r"'missing': 7 of 20 image files do not exist: .* and 2 more"):
        load_coco_json_checked(shapes_coco["train_json"], str(images_dir), "missing")


def test_data_section_errors_name_the_keys_and_numbers(shapes_coco, tmp_path):
    from detectron2.config import LazyConfig

    from detr_plus.engine.config import apply_overrides

    cfg = LazyConfig.load(CUSTOM_TINY)
    with pytest.raises(ValueError, match="data.train_json, data.train_images, data.val_json, data.val_images not set"):
        register_config_datasets(cfg)
    files = [f"data.{k}={shapes_coco[k]}" for k in ("train_json", "train_images", "val_json", "val_images")]
    with pytest.raises(ValueError, match=r"data.num_classes=3, but '.*' has 4 categories"):
        register_config_datasets(apply_overrides(LazyConfig.load(CUSTOM_TINY), files + ["data.num_classes=3"]))
    cfg = apply_overrides(LazyConfig.load(CUSTOM_TINY), files)
    register_config_datasets(cfg)
    assert cfg.data.num_classes == len(SHAPES_CLASSES) and cfg.model.transformer.num_classes == len(SHAPES_CLASSES)
    assert MetadataCatalog.get("custom_val").thing_classes == list(SHAPES_CLASSES)


def corrupt(path):
    with open(path, "wb") as f:
        f.write(b"not a png at all" * 8)


def own_data_args(data, out, *extra):
    """``python train_net.py --config-file configs/custom/deformable_detr_tiny_custom.py`` with overrides only."""

    files = [f"data.{k}={data[k]}" for k in ("train_json", "train_images", "val_json", "val_images")]
    return default_argument_parser().parse_args(["--config-file", CUSTOM_TINY, *files, *TINY_MODEL_OVERRIDES,
                                                 f"train.output_dir={out}", "train.eval_period=0", *extra])


@pytest.fixture(scope="module")
def own_data_run(shapes_coco, tmp_path_factory):
    """30 iterations with one corrupt training image (and one corrupt validation image) allowed by a
    10% limit; evaluation at the end."""
    data = dict(shapes_coco)
    copy_root = tmp_path_factory.mktemp("own_data_corrupt")
    for split in ("train", "val"):
        folder = copy_root / split
        folder.mkdir()
        names = sorted(os.listdir(shapes_coco[f"{split}_images"]))
        for name in names:
            os.symlink(os.path.join(shapes_coco[f"{split}_images"], name), folder / name)
        os.unlink(folder / names[1])
        corrupt(folder / names[1])
        data[f"{split}_images"] = str(folder)
    out = tmp_path_factory.mktemp("own_data_out")
    args = own_data_args(data, out, "train.max_iter=30", "dataloader.train.max_unreadable_fraction=0.1")
    logger = logging.getLogger("detr_plus.data.loader")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        results = load_train_net().main(args)
    finally:
        logger.removeHandler(handler)
    return {"data": data, "out": out, "results": results, "log": [r.getMessage() for r in records],
            "corrupt_train": os.path.join(data["train_images"], sorted(os.listdir(data["train_images"]))[1])}


def test_custom_config_trains_and_evaluates_with_a_corrupt_image(own_data_run):
    """The run finishes its 30 iterations; the skip is counted in the event storage and logged once
    with the file name; evaluation reports its unreadable image and still returns COCO AP; the
    detections PNG is drawn with the json's class names."""
    rows = [json.loads(line) for line in open(own_data_run["out"] / "metrics.json")]
    iterations = [r["iteration"] for r in rows if "total_loss" in r]
    assert max(iterations) == 29
    counts = [r["data/unreadable_images"] for r in rows if "data/unreadable_images" in r]
    assert counts and counts[-1] == 1
    skips = [m for m in own_data_run["log"] if m.startswith("Skipped an unreadable training image")]
    assert skips == [f"Skipped an unreadable training image (another sample takes its place): {own_data_run['corrupt_train']}"]
    assert any(m.startswith("Evaluation: 1 image(s) were unreadable") for m in own_data_run["log"])
    assert math.isfinite(own_data_run["results"]["bbox"]["AP"])
    assert os.path.getsize(own_data_run["out"] / "detections.png") > 0


def test_the_unreadable_limit_stops_the_run(shapes_coco, tmp_path, train_net):
    data = dict(shapes_coco)
    folder = tmp_path / "train"
    folder.mkdir()
    names = sorted(os.listdir(shapes_coco["train_images"]))
    for i, name in enumerate(names):
        if i < 3:
            corrupt(folder / name)
        else:
            os.symlink(os.path.join(shapes_coco["train_images"], name), folder / name)
    data["train_images"] = str(folder)
    args = own_data_args(data, tmp_path / "out", "train.max_iter=30", "dataloader.train.max_unreadable_fraction=0.1")
    with pytest.raises(TooManyUnreadableImages, match=r"3 of the 20 training images are unreadable, more than "
                                                      r"dataloader.train.max_unreadable_fraction=0.1"):
        train_net.main(args)


def three_class_data(own_data_run, tmp_path):
    """The run's data with only its first 3 categories (train and val jsons, annotations filtered)."""
    def three_classes(data):
        data["categories"] = data["categories"][:3]
        kept = {c["id"] for c in data["categories"]}
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in kept]
    data = dict(own_data_run["data"])
    for split in ("train", "val"):
        data[f"{split}_json"] = edited_json(own_data_run["data"], tmp_path, three_classes, split)
    return data


def test_eval_only_with_other_classes_names_both_counts(own_data_run, tmp_path, train_net):
    data = three_class_data(own_data_run, tmp_path)
    checkpoint = own_data_run["out"] / "model_final.pth"
    args = own_data_args(data, tmp_path / "eval", f"train.init_checkpoint={checkpoint}")
    args.eval_only = True
    with pytest.raises(ValueError, match="the checkpoint predicts 4 classes, the model 3"):
        train_net.main(args)


def test_fine_tuning_a_coco_shaped_checkpoint_on_three_classes(own_data_run, tmp_path, train_net):
    """A checkpoint with 80-class heads (COCO's shape) trains on 3-class data with
    train.reinit_class_heads=True: one log line names every re-initialised tensor (each decoder
    layer's class head; no others), every other tensor is the checkpoint's (2 iterations at LR 0;
    parameters only, BatchNorm statistics move in training), and the class heads are the model's
    3-class init. Without the option the run stops before training with both class counts."""
    data = three_class_data(own_data_run, tmp_path)
    state = torch.load(own_data_run["out"] / "model_final.pth", weights_only=False)["model"]
    generator = torch.Generator().manual_seed(0)
    coco_heads = sorted(k for k in state if "class_heads" in k)
    assert len(coco_heads) == 4  # 2 decoder layers x (weight, bias) in the tiny model
    for key in coco_heads:
        state[key] = torch.randn((80, *state[key].shape[1:]), generator=generator)
    checkpoint = tmp_path / "coco_shaped.pth"
    torch.save({"model": state}, checkpoint)

    args = own_data_args(data, tmp_path / "no_option", f"train.init_checkpoint={checkpoint}", "train.max_iter=2")
    with pytest.raises(ValueError, match="the checkpoint predicts 80 classes, the model 3 .*train.reinit_class_heads=True"):
        train_net.main(args)

    out = tmp_path / "fine_tuned"
    args = own_data_args(data, out, f"train.init_checkpoint={checkpoint}", "train.max_iter=2", "optimizer.lr=0",
                         "train.reinit_class_heads=True")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("detr_plus")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        train_net.main(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [r.getMessage() for r in records if r.getMessage().startswith("train.reinit_class_heads")]
    assert lines == [f"train.reinit_class_heads: re-initialised 4 class-head tensors for 3 classes: {', '.join(coco_heads)}; "
                     f"every other tensor comes from {checkpoint}"]
    assert lines[0] in (out / "log.txt").read_text()  # the project's log lines reach the run's log, as detectron2's
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    assert max(r["iteration"] for r in rows if "total_loss" in r) == 1
    tuned = torch.load(out / "model_final.pth", weights_only=False)["model"]
    assert tuned["transformer.decoder.class_heads.0.weight"].shape[0] == 3
    prior = -math.log((1 - 0.01) / 0.01)  # the focal-loss prior the class heads start from
    assert torch.allclose(tuned["transformer.decoder.class_heads.1.bias"], torch.full((3,), prior))
    unchanged = [k for k in state if k not in coco_heads and "running_" not in k and "num_batches" not in k]
    assert len(unchanged) > 100
    for key in unchanged:
        assert torch.equal(tuned[key], state[key]), key


def test_own_data_with_masks_trains_and_reports_segm_ap(shapes_coco, tmp_path):
    """``configs/custom/deformable_detr_tiny_masks_custom.py`` with overrides only: the json's RLE masks
    reach the mask head (its losses in the metrics) and evaluation reports bbox and segm AP."""
    files = [f"data.{k}={shapes_coco[k]}" for k in ("train_json", "train_images", "val_json", "val_images")]
    args = default_argument_parser().parse_args(["--config-file", "configs/custom/deformable_detr_tiny_masks_custom.py", *files,
                                                 *TINY_MODEL_OVERRIDES, f"train.output_dir={tmp_path}", "train.eval_period=0",
                                                 "train.max_iter=3"])
    results = load_train_net().main(args)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert all(math.isfinite(r["loss_mask"]) and r["loss_mask"] > 0 and r["loss_dice"] > 0 for r in rows if "total_loss" in r)
    assert math.isfinite(results["bbox"]["AP"]) and math.isfinite(results["segm"]["AP"])
