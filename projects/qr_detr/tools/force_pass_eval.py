#!/usr/bin/env python
"""Is a QR-DETR model's loss in its routing at inference? COCO AP of a checkpoint as trained, with
one routed layer at a time forced to pass every query, and with all of them (the plain decoder
on the trained weights).

    python projects/qr_detr/tools/force_pass_eval.py --config-file CONFIG train.init_checkpoint=CKPT [key=value ...]
"""
import argparse
import copy

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from detr_plus.engine.config import apply_overrides, resolve_device
from detr_plus_projects.qr_detr.modeling import routed_layers
from detr_plus_projects.qr_detr.tools import evaluation


def force_pass(layers):
    """Routers that pass every query (the layers' own "pass" init)."""
    for layer in layers:
        layer.init_router("pass")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("opts", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).to(resolve_device(cfg.train.get("device", "auto"))).eval()
    layers = routed_layers(model)
    if not layers:
        raise SystemExit(f"{args.config_file}: the model has no routed (EEQR) decoder layer")
    loader = instantiate(cfg.dataloader.test)

    def bbox_ap():
        return evaluation.bbox_ap(cfg, model, loader)

    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    results = {"as trained": bbox_ap()}
    for i, layer in layers.items():
        trained = copy.deepcopy(layer.router.state_dict())
        force_pass([layer])
        results[f"layer{i}_{layer.mode} passes all"] = bbox_ap()
        layer.router.load_state_dict(trained)
    force_pass(layers.values())
    results["every routed layer passes all"] = bbox_ap()
    print("| routing at evaluation | bbox AP |\n|---|---|")
    for name, ap in results.items():
        print(f"| {name} | {ap:.1f} |")
    return results


if __name__ == "__main__":
    main()
