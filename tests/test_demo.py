"""tools/demo.py (issue #14): detections on your own images as PNG + JSON, equal to the model's own
``Instances``; unreadable files skipped and reported; any method's checkpoint in its baseline's config;
a checkpoint that does not match the config named key by key."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from PIL import Image

from conftest import REPO, TINY_CONFIG
from detr_plus.data.shapes import SHAPES_CLASSES
from detr_plus.engine.config import apply_overrides

pytestmark = pytest.mark.usefixtures("single_thread")
MR_CONFIG = str(REPO / "projects" / "mr_detr" / "configs" / "mr_detr_shapes_tiny.py")
SMALL = ["model.transformer.encoder.num_layers=1", "model.transformer.decoder.num_layers=2", "model.transformer.num_queries=30"]
_spec = importlib.util.spec_from_file_location("demo", REPO / "tools" / "demo.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)


def small_model(config, seed=0):
    torch.manual_seed(seed)
    model = instantiate(apply_overrides(LazyConfig.load(config), SMALL).model)
    with torch.no_grad():  # spread the scores (the init gives every class probability 0.01)
        for head in model.transformer.decoder.class_heads:
            head.weight.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_images")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (96, 128), "b.jpg": (120, 90), "c.png": (64, 64)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def mr_checkpoint(tmp_path_factory):
    """A Mr. DETR checkpoint (training routes included) of the small model."""
    path = tmp_path_factory.mktemp("ckpt") / "mr.pth"
    model = small_model(MR_CONFIG)
    torch.save({"model": model.state_dict()}, path)
    return path, model


def run_demo(config, inputs, out, checkpoint, *extra):
    return demo.main(["--config-file", config, "--input", *map(str, inputs), "--output", str(out), *extra,
                      *SMALL, f"train.init_checkpoint={checkpoint}"])


def test_json_equals_the_models_instances(images, mr_checkpoint, tmp_path):
    """Boxes (original pixels, XYXY), scores and classes of every detection above the threshold are
    those of the model's own output for the image, in the same order; the PNG has the image's size."""
    checkpoint, model = mr_checkpoint
    cfg = LazyConfig.load(TINY_CONFIG)
    mapper = instantiate(cfg.dataloader.test.mapper)
    path = images / "b.jpg"
    with torch.no_grad():
        instances = model([mapper({"file_name": str(path), "image_id": 0})])[0]["instances"]
    threshold = float(instances.scores.median())
    written, skipped = run_demo(TINY_CONFIG, [path], tmp_path, checkpoint, "--confidence-threshold", str(threshold))
    assert skipped == [] and written == [str(tmp_path / "b")]
    result = json.load(open(tmp_path / "b.json"))
    keep = instances.scores >= threshold
    assert 0 < keep.sum() < len(instances) and (result["height"], result["width"]) == (120, 90)
    found = result["detections"]
    torch.testing.assert_close(torch.tensor([d["box_xyxy"] for d in found]), instances.pred_boxes.tensor[keep])
    torch.testing.assert_close(torch.tensor([d["score"] for d in found]), instances.scores[keep])
    assert [d["class_id"] for d in found] == instances.pred_classes[keep].tolist()
    assert [d["class_name"] for d in found] == [SHAPES_CLASSES[c] for c in instances.pred_classes[keep].tolist()]
    assert Image.open(tmp_path / "b.png").size == (90, 120)


def test_a_folder_with_bad_files_processes_the_others(images, mr_checkpoint, tmp_path):
    checkpoint, _ = mr_checkpoint
    folder = tmp_path / "in"
    folder.mkdir()
    for name in os.listdir(images):
        os.symlink(images / name, folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG not really" * 4)
    (folder / "notes.txt").write_text("not an image")
    written, skipped = run_demo(TINY_CONFIG, [folder], tmp_path / "out", checkpoint)
    assert sorted(os.path.basename(w) for w in written) == ["a", "b", "c"]
    assert sorted(os.path.basename(s) for s in skipped) == ["broken.png", "notes.txt"]
    for name, size in (("a", (128, 96)), ("c", (64, 64))):
        assert Image.open(tmp_path / "out" / f"{name}.png").size == size


def test_a_methods_checkpoint_runs_in_its_own_and_the_baseline_config(images, mr_checkpoint, tmp_path):
    """Inference ignores training routes: Mr. DETR's checkpoint gives the same detections in its own
    config and in the baseline's (which has no routes)."""
    checkpoint, _ = mr_checkpoint
    run_demo(MR_CONFIG, [images / "a.png"], tmp_path / "mr", checkpoint, "--confidence-threshold", "0.0")
    run_demo(TINY_CONFIG, [images / "a.png"], tmp_path / "base", checkpoint, "--confidence-threshold", "0.0")
    assert json.load(open(tmp_path / "mr" / "a.json")) == json.load(open(tmp_path / "base" / "a.json"))
    # --eval-variant runs a training variant instead (Route-1: its own query stream and predictions)
    run_demo(MR_CONFIG, [images / "a.png"], tmp_path / "route1", checkpoint, "--confidence-threshold", "0.0", "--eval-variant", "route1")
    assert json.load(open(tmp_path / "route1" / "a.json")) != json.load(open(tmp_path / "mr" / "a.json"))


def test_a_checkpoint_of_another_model_names_the_mismatching_keys(images, tmp_path):
    model = small_model(TINY_CONFIG)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("transformer.decoder.layers.1.")}
    state["transformer.query_content.weight"] = torch.zeros(50, 128)
    torch.save({"model": state}, tmp_path / "other.pth")
    with pytest.raises(ValueError) as error:
        run_demo(TINY_CONFIG, [images / "a.png"], tmp_path / "out", tmp_path / "other.pth")
    message = str(error.value)
    assert "transformer.query_content.weight: checkpoint (50, 128), model (30, 128)" in message
    assert "transformer.decoder.layers.1.ffn.norm.weight: not in the checkpoint" in message
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        run_demo(TINY_CONFIG, [tmp_path / "nothing*.png"], tmp_path / "out", tmp_path / "other.pth")


def test_class_names_from_the_checkpoints_saved_config(images, tmp_path):
    """With a config whose dataset is not registered (``configs/custom/*`` without ``data.*``), the class
    count comes from the checkpoint and the names from the ``config.yaml`` that training saved beside
    it (its data section)."""
    from detr_plus.data import generate_shapes_dataset

    from detectron2.data import DatasetCatalog, MetadataCatalog

    json_file = generate_shapes_dataset(str(tmp_path / "data"), "val", 2, seed=5, progress=False)
    data = json.load(open(json_file))
    renamed = ["alpha", "beta", "gamma", "delta"]
    for category, name in zip(sorted(data["categories"], key=lambda c: c["id"]), renamed):
        category["name"] = name
    json.dump(data, open(json_file, "w"))
    for name in ("custom_train", "custom_val"):  # as in a fresh process: nothing registered
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    custom = "configs/custom/deformable_detr_tiny_custom.py"
    files = [f"data.{k}_json={json_file}" for k in ("train", "val")] + [f"data.{k}_images={tmp_path / 'data' / 'val'}" for k in ("train", "val")]
    cfg = apply_overrides(LazyConfig.load(custom), files + ["data.num_classes=4"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    LazyConfig.save(cfg, str(run_dir / "config.yaml"))
    torch.save({"model": small_model(TINY_CONFIG).state_dict()}, run_dir / "model_final.pth")
    demo.main(["--config-file", custom, "--input", str(images / "c.png"), "--output", str(tmp_path / "out"),
               "--confidence-threshold", "0.0", *SMALL, f"train.init_checkpoint={run_dir / 'model_final.pth'}"])
    names = {d["class_name"] for d in json.load(open(tmp_path / "out" / "c.json"))["detections"]}
    assert names and names <= set(renamed)


def test_masks_are_drawn_and_written_as_rle(images, tmp_path):
    """A model with the mask head: each detection's RLE decodes to the model's own ``pred_masks`` at the
    original size, with its area."""
    from pycocotools import mask as mask_util

    config = str(REPO / "configs" / "shapes" / "deformable_detr_tiny_masks.py")
    model = small_model(config)
    with torch.no_grad():  # about half of the pixels positive: masks worth drawing
        model.heads["mask"].decoder.output.bias.fill_(0.0)
    checkpoint = tmp_path / "masks.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    written, _ = run_demo(config, [images / "a.png"], tmp_path / "out", checkpoint, "--confidence-threshold", "0.0")
    found = json.load(open(written[0] + ".json"))["detections"]
    mapper = instantiate(LazyConfig.load(config).dataloader.test.mapper)
    with torch.no_grad():
        instances = model([mapper({"file_name": str(images / "a.png"), "image_id": 0})])[0]["instances"]
    assert len(found) == len(instances) > 0
    for detection, mask in zip(found, instances.pred_masks):
        decoded = mask_util.decode(detection["mask_rle"]).astype(bool)
        assert decoded.shape == (96, 128) and np.array_equal(decoded, mask.numpy())
        assert detection["mask_area"] == int(mask.sum())
    assert any(d["mask_area"] > 0 for d in found)
    assert np.asarray(Image.open(written[0] + ".png")).shape[:2] == (96, 128)  # Detectron2's Visualizer draws pred_masks
