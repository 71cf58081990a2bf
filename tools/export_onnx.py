#!/usr/bin/env python
"""Export a checkpoint's inference model to ONNX, and check it against PyTorch with onnxruntime:

    python tools/export_onnx.py --config-file CONFIG train.init_checkpoint=CKPT --output model.onnx
        [--canvas H W] [--check N] [--opset 17]

The graph (``detr_plus.deploy.InferenceGraph``) is the baseline's inference of any method's
checkpoint: image (3, H, W) float 0-255 in the config's input format and its valid size (h, w)
int64 in; the top-k boxes (xyxy pixels of the image), scores and classes out, the post-processing
inside. H x W is the canvas, fixed at export (default: the test resize's longest side, rounded up to
the size divisibility, both ways); smaller images are padded to it (``detr_plus.deploy.pad_to_canvas``).
``--check N`` runs N images of the config's test set (random images without it) through onnxruntime
and PyTorch and fails unless every detection agrees within 1e-4 (scores) and 1e-3 pixels (boxes);
it also prints the time per image of each.
"""
import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import build_predictor  # noqa: E402  (the checkpoint checks and loading of tools/demo.py)

from detr_plus.deploy import EXPORT_ATTENTION, InferenceGraph, attention_implementation, match_detections, pad_to_canvas  # noqa: E402

SCORE_ATOL, BOX_ATOL = 1e-4, 1e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--canvas", nargs=2, type=int, metavar=("H", "W"), default=None, help="input size of the graph")
    parser.add_argument("--check", type=int, default=0, metavar="N", help="compare onnxruntime with PyTorch on N images")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value (train.init_checkpoint=...)")
    args = parser.parse_args(argv)
    args.eval_variant, args.onnx = None, None
    return args


def default_canvas(mapper, size_divisibility):
    """The longest side the test resize can give, rounded up to ``size_divisibility``, both ways."""
    augmentations = getattr(getattr(mapper, "augmentations", None), "augs", [])
    longest = max([getattr(aug, "max_size", 0) for aug in augmentations], default=0)
    if not longest:
        raise ValueError("the config's test mapper has no resize with a max_size: give --canvas H W")
    side = math.ceil(longest / size_divisibility) * size_divisibility
    return side, side


def check_images(dataset_name, mapper, count, canvas, seed=0):
    """(name, image (3, h, w) float) of the first ``count`` images of the test set, else random ones."""
    from detectron2.data import DatasetCatalog

    try:
        dicts = DatasetCatalog.get(dataset_name)
    except (KeyError, FileNotFoundError, AssertionError):
        dicts = None
    if dicts:
        return [(d["file_name"], mapper(dict(d))["image"].float()) for d in dicts[:count]]
    generator = torch.Generator().manual_seed(seed)
    return [(f"random {i}", torch.rand(3, canvas[0] - 8 * i, canvas[1] - 16 * i, generator=generator) * 255) for i in range(count)]


def export(graph, canvas, path, opset):
    image, size = pad_to_canvas(torch.zeros(3, *canvas), canvas)
    with attention_implementation(graph.model), torch.no_grad():
        torch.onnx.export(graph, (image, size), path, dynamo=False, opset_version=opset, input_names=["image", "image_size"],
                          output_names=["boxes", "scores", "classes"])
    import onnx

    model = onnx.load(path)
    num_classes = graph.model.transformer.decoder.class_heads[0].out_features
    for key, value in {"canvas": f"{canvas[0]}x{canvas[1]}", "num_classes": str(num_classes), "deformable_attention": EXPORT_ATTENTION}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


def check(graph, path, images, canvas):
    """(every image agrees, lines to print): onnxruntime against the PyTorch graph on each image."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    lines, ok, times = [], True, {"pytorch": 0.0, "onnxruntime": 0.0}
    for name, image in images:
        padded, size = pad_to_canvas(image, canvas)
        start = time.perf_counter()
        with attention_implementation(graph.model), torch.no_grad():
            expected = dict(zip(("boxes", "scores", "classes"), graph(padded, size)))
        times["pytorch"] += time.perf_counter() - start
        start = time.perf_counter()
        got = session.run(None, {"image": padded.numpy(), "image_size": size.numpy()})
        times["onnxruntime"] += time.perf_counter() - start
        agree, why = match_detections(expected, dict(zip(("boxes", "scores", "classes"), map(torch.from_numpy, got))), BOX_ATOL, SCORE_ATOL)
        ok &= agree
        lines.append(f"  {name} ({image.shape[-2]}x{image.shape[-1]}): {'agree' if agree else 'DIFFER: ' + why}")
    n = max(len(images), 1)
    lines.append(f"  time per image on the CPU ({torch.get_num_threads()} threads): PyTorch ({EXPORT_ATTENTION}) "
                 f"{1000 * times['pytorch'] / n:.1f} ms, onnxruntime {1000 * times['onnxruntime'] / n:.1f} ms")
    return ok, lines


def main(argv=None):
    args = parse_args(argv)
    model, mapper, _ = build_predictor(args)
    model.to("cpu")
    canvas = tuple(args.canvas) if args.canvas else default_canvas(mapper, model.size_divisibility)
    graph = InferenceGraph(model)
    export(graph, canvas, args.output, args.opset)
    print(f"Exported {os.path.abspath(args.output)}: canvas {canvas[0]}x{canvas[1]}, top {graph.num_detections}, "
          f"deformable attention '{EXPORT_ATTENTION}', opset {args.opset}")
    if args.check:
        from detectron2.config import LazyConfig

        dataset = LazyConfig.load(args.config_file).dataloader.test.dataset.names
        ok, lines = check(graph, args.output, check_images(dataset, mapper, args.check, canvas), canvas)
        print(f"onnxruntime vs PyTorch (scores within {SCORE_ATOL}, boxes within {BOX_ATOL} px):\n" + "\n".join(lines))
        if not ok:
            raise SystemExit(f"{args.output}: onnxruntime and PyTorch disagree (see above)")
    return canvas


if __name__ == "__main__":
    main()
