#!/usr/bin/env python
"""Save the instructive self-attention map of a Mr. DETR model on one image as a PNG (the project
page's figure "Visualization of attention maps for instructive self-attention": object queries
x [instruction tokens + object queries], the first T keys being the instruction tokens).

    python projects/mr_detr/tools/attention_map.py \
        --config-file projects/mr_detr/configs/mr_deformable_detr_plusplus_r50_12ep.py \
        --checkpoint output/mr_deformable_detr_plusplus_r50_12ep/model_final.pth \
        --image datasets/coco/val2017/000000000139.jpg --layer 5 --out attention_layer5.png [key=value ...]

The model runs in eval mode with the route evaluated next to the primary one (``eval_variant``), so
decoder layer ``--layer`` sees the route's own query stream; its instructive attention there is
recomputed on the same input with ``need_weights=True`` (head-averaged weights). ``--min-size``
resizes the shorter image side first.
"""
import argparse
import os

import torch

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import detection_utils
from detectron2.data import transforms as T

from detr_plus.engine.config import apply_overrides, resolve_device


@torch.no_grad()
def instructive_attention(model, image, layer_index, route="route3"):
    """(Q, T + Q) head-averaged instructive self-attention weights of ``route`` in decoder layer
    ``layer_index`` for ``image`` (a CHW tensor in the model's input format), and T."""
    if route not in model.variants:
        raise ValueError(f"the model has no route {route!r} (routes: {list(model.variants)})")
    branch = model.variants[route].layer_variant(layer_index)
    if branch is None or not hasattr(branch, "num_tokens"):
        raise ValueError(f"route {route!r} has no instructive self-attention in decoder layer {layer_index}")
    captured = {}
    self_attention = branch.self_attention

    def capturing(query, context, shared):
        captured["weights"] = branch.attend(query, context, shared, need_weights=True)[1]
        return self_attention(query, context, shared)

    branch.self_attention, saved_eval_variant = capturing, model.eval_variant  # an instance attribute over the method
    try:
        model.eval()
        model.eval_variant = route  # run the route (its own query stream) next to the primary one
        model([{"image": image}])
    finally:
        del branch.self_attention  # the class's method again (no bound-method copy left on the module)
        model.eval_variant = saved_eval_variant
    return captured["weights"][0], branch.num_tokens


def save_attention_png(weights, num_tokens, path, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = weights.float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(8, 8 * weights.shape[0] / weights.shape[1] + 0.8))
    image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.axvline(num_tokens - 0.5, color="white", linewidth=0.8)
    ax.set_xlabel(f"Key (first {num_tokens}: instruction tokens, then object queries)")
    ax.set_ylabel("Query (object queries)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--layer", type=int, default=-1, help="decoder layer index (default: the last)")
    parser.add_argument("--route", default="route3")
    parser.add_argument("--min-size", type=int, default=0, help="resize the shorter side to this first (0: keep)")
    parser.add_argument("--out", default="instructive_attention.png")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)

    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).to(resolve_device(cfg.train.get("device", "auto")))
    DetectionCheckpointer(model).load(args.checkpoint)
    image = detection_utils.read_image(args.image, format=model.input_format)
    if args.min_size:
        image = T.ResizeShortestEdge(args.min_size, max_size=1333).get_transform(image).apply_image(image)
    layer = args.layer % len(model.transformer.decoder.layers)
    weights, num_tokens = instructive_attention(model, torch.as_tensor(image.transpose(2, 0, 1).copy()), layer, args.route)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    title = f"{os.path.basename(args.image)}: {args.route}, decoder layer {layer}"
    save_attention_png(weights, num_tokens, args.out, title)
    print(f"Saved the instructive self-attention map ({weights.shape[0]} queries x {num_tokens} tokens + "
          f"{weights.shape[1] - num_tokens} queries) to {os.path.abspath(args.out)}")
    return args.out


if __name__ == "__main__":
    main()
