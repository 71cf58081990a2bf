#!/usr/bin/env python
"""QR-DETR's routing statistics on the evaluation set (Table 2: mean queries passing each routed
layer; Fig. 4: their distribution), as a table and a PNG.

    python projects/qr_detr/tools/routing_stats.py --config-file CONFIG train.init_checkpoint=CKPT \
        [--max-images N] [--out routing_eval.png] [key=value ...]
"""
import argparse
import os

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from detr_plus.engine.config import apply_overrides, resolve_device
from detr_plus_projects.qr_detr.modeling import evaluate_routing, plot_routing, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--max-images", type=int, default=None, help="first N evaluation images (default: all)")
    parser.add_argument("--out", default=None, help="PNG path (default: <train.output_dir>/routing_eval.png)")
    parser.add_argument("opts", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)  # options may come after the overrides, as in the usage line
    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).to(resolve_device(cfg.train.get("device", "auto")))
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    loader = instantiate(cfg.dataloader.test)
    counts = evaluate_routing(model, loader, max_batches=args.max_images)
    if not counts:
        raise SystemExit(f"{args.config_file}: the model has no routed (EEQR) decoder layer")
    out = args.out or os.path.join(cfg.train.output_dir, "routing_eval.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot_routing(counts, model.transformer.num_queries, out, f"queries passing each routed layer on {cfg.dataloader.test.dataset.names}")
    print(f"| layer | mean queries passing (of {model.transformer.num_queries}) | images |")
    print("|---|---|---|")
    for name, mean in summary(counts).items():
        print(f"| {name} | {mean:.1f} | {len(counts[name])} |")
    print(f"Routing distributions: {os.path.abspath(out)}")
    return counts


if __name__ == "__main__":
    main()
