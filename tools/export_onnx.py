#!/usr/bin/env python
"""Export a checkpoint's inference model to ONNX, and check it against PyTorch with onnxruntime:

    python tools/export_onnx.py --config-file CONFIG train.init_checkpoint=CKPT --output model.onnx
        [--trace-size H W] [--check N] [--opset 17] [--torch-export model.pt2]

The graph (``detr_plus.deploy.InferenceGraph``) is the baseline's inference of any method's
checkpoint: an image (3, H, W) float 0-255 in the config's input format, of any size, in; the top-k
boxes (xyxy pixels of the image), scores and classes out, the post-processing inside. The image is
traced at ``--trace-size`` (default: the test resize's shortest edge x its max size) and the graph
takes any other size. ``--check N`` runs N images of the config's test set (random images of
several sizes without it) through onnxruntime and PyTorch and fails unless every detection agrees
within 1e-4 (scores) and 1e-3 pixels (boxes); it also prints the time per image of each.
``--torch-export FILE`` also writes the same graph as a ``torch.export`` program (``torch.export.load``),
for the trace size only: with a free size the exporter's shape guards fail (left open).
"""
import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo import build_predictor  # noqa: E402  (the checkpoint checks and loading of tools/demo.py)

from detr_plus.deploy import EXPORT_ATTENTION, InferenceGraph, attention_implementation, match_detections  # noqa: E402

SCORE_ATOL, BOX_ATOL = 1e-4, 1e-3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--trace-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                        help="size of the image the graph is traced on (the graph takes any size)")
    parser.add_argument("--check", type=int, default=0, metavar="N", help="compare onnxruntime with PyTorch on N images")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--torch-export", default=None, metavar="FILE", help="also write a torch.export program (.pt2) of the trace size")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value (train.init_checkpoint=...)")
    args = parser.parse_args(argv)
    args.eval_variant, args.onnx = None, None
    return args


def default_trace_size(mapper):
    """(the test resize's shortest edge, its max size): the shape of a typical test image."""
    augmentations = getattr(getattr(mapper, "augmentations", None), "augs", [])
    for aug in augmentations:
        short, longest = getattr(aug, "short_edge_length", None), getattr(aug, "max_size", 0)
        if short and longest:
            return int(max(short)), int(longest)
    raise ValueError("the config's test mapper has no shortest-edge resize with a max_size: give --trace-size H W")


def check_images(dataset_name, mapper, count, size, seed=0):
    """(name, image (3, h, w) float) of the first ``count`` images of the test set, else random ones of
    ``size`` and smaller."""
    from detectron2.data import DatasetCatalog

    try:
        dicts = DatasetCatalog.get(dataset_name)
    except (KeyError, FileNotFoundError, AssertionError):
        dicts = None
    if dicts:
        return [(d["file_name"], mapper(dict(d))["image"].float()) for d in dicts[:count]]
    generator = torch.Generator().manual_seed(seed)
    return [(f"random {i}", torch.rand(3, size[0] - 8 * i, size[1] - 16 * i, generator=generator) * 255) for i in range(count)]


def export(graph, trace_size, path, opset):
    image = torch.zeros(3, *trace_size)
    with attention_implementation(graph.model), torch.no_grad(), warnings.catch_warnings():
        # the tracer warns at every shape check and Python int it sees: expected, the sizes stay traced
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(graph, (image,), path, dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=["boxes", "scores", "classes"], dynamic_axes={"image": {1: "height", 2: "width"}})
    import onnx

    model = onnx.load(path)
    num_classes = graph.model.transformer.decoder.class_heads[0].out_features
    for key, value in {"num_classes": str(num_classes), "deformable_attention": EXPORT_ATTENTION,
                       "size_divisibility": str(graph.model.size_divisibility)}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)


def check(graph, path, images):
    """(every image agrees, lines to print): onnxruntime against the PyTorch graph on each image."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    lines, ok, times = [], True, {"pytorch": 0.0, "onnxruntime": 0.0}
    for name, image in images:
        start = time.perf_counter()
        with attention_implementation(graph.model), torch.no_grad():
            expected = dict(zip(("boxes", "scores", "classes"), graph(image)))
        times["pytorch"] += time.perf_counter() - start
        start = time.perf_counter()
        got = session.run(None, {"image": image.numpy()})
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
    trace_size = tuple(args.trace_size) if args.trace_size else default_trace_size(mapper)
    graph = InferenceGraph(model)
    export(graph, trace_size, args.output, args.opset)
    print(f"Exported {os.path.abspath(args.output)}: any image size (traced at {trace_size[0]}x{trace_size[1]}), "
          f"top {graph.num_detections}, deformable attention '{EXPORT_ATTENTION}', opset {args.opset}")
    if len(model.heads):
        print(f"Note: the graph gives boxes, scores and classes only; the model's heads {sorted(model.heads)} "
              "(a mask head's masks) are not in it")
    if args.torch_export:
        with attention_implementation(model), torch.no_grad():
            program = torch.export.export(graph, (torch.zeros(3, *trace_size),), strict=False)
        torch.export.save(program, args.torch_export)
        print(f"Wrote {os.path.abspath(args.torch_export)}: torch.export program for {trace_size[0]}x{trace_size[1]} images")
    if args.check:
        from detectron2.config import LazyConfig

        dataset = LazyConfig.load(args.config_file).dataloader.test.dataset.names
        ok, lines = check(graph, args.output, check_images(dataset, mapper, args.check, trace_size))
        print(f"onnxruntime vs PyTorch (scores within {SCORE_ATOL}, boxes within {BOX_ATOL} px):\n" + "\n".join(lines))
        if not ok:
            raise SystemExit(f"{args.output}: onnxruntime and PyTorch disagree (see above)")
    return trace_size


if __name__ == "__main__":
    main()
