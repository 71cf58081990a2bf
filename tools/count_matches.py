#!/usr/bin/env python
"""How many queries each criterion matches per object: every loss entry of a training step (the
primary queries by decoder layer, the encoder, each variant, route and query group) over a few
training batches of the config's own loader.

    python tools/count_matches.py --config-file CONFIG [--checkpoint model_final.pth] [--batches 4] [key=value ...]

A one-to-one criterion matches 1.00 per object; H-DETR's one-to-many group k (its targets repeated
k times); a quality-thresholded one-to-many assignment (Mr. DETR's Routes 1 and 3) between 1 and its
top-k, growing as the predictions improve. Every head on a decoder layer (the mask head) is trained
on exactly these pairs, so the counts say how many matched examples it sees per object.
"""
import argparse
from collections import defaultdict

import torch

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
import detr_plus.data  # noqa: F401  (registers the shapes and custom data sets)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from detr_plus.engine.config import apply_overrides, resolve_device


@torch.no_grad()
def count_matches(model, batches):
    """({(name, layer): matched pairs}, number of objects) of ``training_losses`` over ``batches``."""
    pairs, objects = defaultdict(int), 0
    model.train()
    for batched_inputs in batches:
        objects += sum(len(x["instances"]) for x in batched_inputs)
        _, matching = model.training_losses(batched_inputs)
        for name, layers in matching.items():
            for layer, indices in enumerate(layers):
                if indices is not None:
                    pairs[name, layer] += sum(len(query) for query, _ in indices)
    return dict(pairs), objects


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--checkpoint", default="", help="weights to load (default: none, the model as instantiated; train.init_checkpoint is not read)")
    parser.add_argument("--batches", type=int, default=4, help="training batches to count over")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)

    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    torch.manual_seed(cfg.train.get("seed", 0) or 0)
    model = instantiate(cfg.model).to(resolve_device(cfg.train.get("device", "auto")))
    if args.checkpoint:
        DetectionCheckpointer(model).load(args.checkpoint)
    cfg.dataloader.train.num_workers = 0
    loader = iter(instantiate(cfg.dataloader.train))
    pairs, objects = count_matches(model, (next(loader) for _ in range(args.batches)))
    print(f"{objects} objects in {args.batches} training batches")
    print(f"{'matched by':<28}{'layer':>6}{'pairs':>8}{'per object':>12}")
    for (name, layer), count in pairs.items():
        print(f"{name:<28}{layer:>6}{count:>8}{count / max(objects, 1):>12.2f}")
    return pairs, objects


if __name__ == "__main__":
    main()
