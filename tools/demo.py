#!/usr/bin/env python
"""Run a trained checkpoint on your own images (Detectron2's ``demo/demo.py`` for detr_plus):

    python tools/demo.py --config-file CONFIG --input IMG|DIR|GLOB ... [--output DIR]
        [--confidence-threshold 0.5] [--eval-variant NAME] train.init_checkpoint=CKPT [key=value ...]
    python tools/demo.py --config-file CONFIG --onnx model.onnx --input ...   (the exported model, onnxruntime)

Per image it writes ``DIR/<name>.png`` (the detections drawn by Detectron2's ``Visualizer``, class
names from the dataset metadata or the checkpoint's ``config.yaml``; masks too for a model with a
mask head) and ``DIR/<name>.json`` (boxes XYXY in original image pixels, scores, class ids and names,
and each mask's area and COCO RLE), and prints a one-line summary. The
model runs in eval mode on the config's device with the config's test-time resize; a method's
training variants, query groups and teachers are not run. Unreadable or non-image files are reported and skipped.
With ``--onnx`` the model is the file written by ``tools/export_onnx.py``, run by onnxruntime on the
CPU; the config gives the test-time resize and the class names only (the exported graph is
box-only: a mask head is not in it).
"""
import argparse
import glob
import json
import os

import numpy as np

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from detr_plus.data.custom import register_config_datasets
from detr_plus.data.mapper import IMAGE_ERRORS, read_image_checked
from detr_plus.engine.checkpoint import check_checkpoint_matches, checkpoint_state_dict
from detr_plus.engine.config import apply_overrides, resolve_device


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", default="./output/demo", help="folder for the PNG and JSON files")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--eval-variant", default=None, help="a training variant (model.variants) to evaluate instead of the primary queries")
    parser.add_argument("--onnx", default=None, help="run this exported model (tools/export_onnx.py) with onnxruntime instead of the checkpoint")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")
    return parser.parse_args(argv)


def expand_inputs(inputs):
    """Files in the order given: a folder gives its files (sorted), a pattern its matches (sorted)."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item) if os.path.isfile(os.path.join(item, f)))
        elif os.path.isfile(item):
            files.append(item)
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"--input {item!r}: no such file or folder, and no file matches it as a pattern")
            files += [m for m in matches if os.path.isfile(m)]
    return files


def class_names(cfg, checkpoint):
    """The test dataset's class names, else those of the ``config.yaml`` saved beside the checkpoint."""
    names = MetadataCatalog.get(cfg.dataloader.test.dataset.names).get("thing_classes")
    saved = os.path.join(os.path.dirname(checkpoint or ""), "config.yaml")
    if names is None and os.path.isfile(saved):
        saved_cfg = LazyConfig.load(saved)
        register_config_datasets(saved_cfg, required=False)
        names = MetadataCatalog.get(saved_cfg.dataloader.test.dataset.names).get("thing_classes")
    return names


def build_predictor(args):
    """(model in eval mode with the checkpoint's weights, test mapper, metadata) of the config; with
    ``--onnx`` an ``OnnxPredictor`` of that file in place of the model."""
    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    if getattr(args, "onnx", None):
        register_config_datasets(cfg, required=False)
        mapper = instantiate(cfg.dataloader.test.mapper)
        mapper.unreadable = "raise"
        names = class_names(cfg, args.onnx)
        predictor = OnnxPredictor(args.onnx)
        metadata = Metadata(name="demo", thing_classes=list(names) if names else [str(i) for i in range(predictor.num_classes)])
        return predictor, mapper, metadata
    checkpoint = cfg.train.init_checkpoint
    if not checkpoint or not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"train.init_checkpoint={checkpoint!r}: give the checkpoint file to run, "
                                "e.g. train.init_checkpoint=output/shapes_deformable_detr_tiny/model_final.pth")
    state = checkpoint_state_dict(checkpoint)  # loaded once: class count, check and weights
    if not register_config_datasets(cfg, required=False) and "data" in cfg and cfg.data.get("num_classes") is None:
        # own-data config without its files: the class count is the checkpoint's
        heads = [v for k, v in state.items() if k.endswith("class_heads.0.weight")]
        cfg.data.num_classes = int(heads[0].shape[0]) if heads else None
    if args.eval_variant is not None:
        cfg.model.eval_variant = args.eval_variant
    model = instantiate(cfg.model)
    check_checkpoint_matches(model, checkpoint, require_all=True, state=state)
    model.load_state_dict(state, strict=False)  # training-only keys may be absent / extra
    model.to(resolve_device(cfg.train.get("device", "auto"))).eval()
    mapper = instantiate(cfg.dataloader.test.mapper)
    mapper.unreadable = "raise"  # report and skip, not evaluate a black image
    names = class_names(cfg, checkpoint)
    num_classes = model.transformer.decoder.class_heads[0].out_features
    metadata = Metadata(name="demo", thing_classes=list(names) if names else [str(i) for i in range(num_classes)])
    return model, mapper, metadata


class OnnxPredictor:
    """The exported graph (``tools/export_onnx.py``) as a predictor with the model's call: a list of
    mapped inputs in, ``[{"instances": Instances}]`` out, in original image pixels as the model gives."""

    def __init__(self, path):
        import onnx
        import onnxruntime

        if not os.path.isfile(path):
            raise FileNotFoundError(f"--onnx {path}: no such file (write one with tools/export_onnx.py)")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        self.num_classes = int(meta.get("num_classes", 0))

    def __call__(self, batched_inputs):
        from detectron2.modeling import detector_postprocess
        from detectron2.structures import Boxes, Instances

        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            boxes, scores, classes = (torch.from_numpy(a) for a in self.session.run(None, {"image": image.float().numpy()}))
            instances = Instances(tuple(image.shape[-2:]))
            instances.pred_boxes, instances.scores, instances.pred_classes = Boxes(boxes), scores, classes
            # to the original image and without empty boxes, as DeformableDETR's post-processing does
            instances = detector_postprocess(instances, inputs.get("height", image.shape[-2]), inputs.get("width", image.shape[-1]))
            results.append({"instances": instances})
        return results


def detections(instances, names):
    """One dict per detection; with masks (a mask head) also "mask_area" (pixels) and "mask_rle" (COCO RLE)."""
    found = [{"box_xyxy": [float(v) for v in box], "score": float(score), "class_id": int(c), "class_name": names[int(c)]}
             for box, score, c in zip(instances.pred_boxes.tensor.tolist(), instances.scores.tolist(), instances.pred_classes.tolist())]
    if instances.has("pred_masks"):
        from pycocotools import mask as mask_util

        for detection, mask in zip(found, instances.pred_masks.numpy()):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            detection["mask_area"] = int(mask.sum())
            detection["mask_rle"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return found


@torch.no_grad()
def main(argv=None):
    args = parse_args(argv)
    files = expand_inputs(args.input)
    model, mapper, metadata = build_predictor(args)
    os.makedirs(args.output, exist_ok=True)
    written, skipped = [], []
    for path in tqdm(files, desc="demo", disable=len(files) < 4):
        try:
            inputs = mapper({"file_name": path, "image_id": 0})
            image = read_image_checked(path, "RGB")
        except IMAGE_ERRORS as e:
            skipped.append(path)
            tqdm.write(f"skipped {path}: {e}")
            continue
        instances = model([inputs])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= args.confidence_threshold]
        stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
        Visualizer(image, metadata, scale=1.0).draw_instance_predictions(instances).save(stem + ".png")
        found = detections(instances, metadata.thing_classes)
        with open(stem + ".json", "w") as f:
            json.dump({"file_name": path, "height": image.shape[0], "width": image.shape[1], "detections": found}, f, indent=1)
        counts = {}
        for d in found:
            counts[d["class_name"]] = counts.get(d["class_name"], 0) + 1
        tqdm.write(f"{path}: {len(found)} detections >= {args.confidence_threshold} "
                   f"({', '.join(f'{n} {c}' for c, n in counts.items()) or 'none'}) -> {stem}.png, {stem}.json")
        written.append(stem)
    print(f"Wrote {len(written)} PNG + JSON pairs to {os.path.abspath(args.output)}"
          + (f"; skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}" if skipped else ""))
    return written, skipped


if __name__ == "__main__":
    main()
