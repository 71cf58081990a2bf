#!/usr/bin/env python
"""Drop every training-only part (``variants.*``: auxiliary FFNs, LoRA branches, instruction tokens, ...;
``group_sources.*``, ``extra_output_criteria.*``, any module's ``training_only`` child, and the same
under older checkpoints' names)
from a checkpoint of any detr_plus method, so that it loads into the plain ``DeformableDETR``.

    python tools/strip_training_parts.py IN.pth OUT.pth [--ema] [--check-config CONFIG [key=value ...]]

``IN.pth``: a detectron2 checkpoint ({"model": ..., "optimizer": ..., ...}) or a bare state dict.
``OUT.pth``: {"model": stripped state dict}; the optimizer state is not kept (it refers to the
dropped parameters). ``--ema`` writes the EMA weights (``train.ema.enabled=True``) instead, with the
model's non-floating buffers, which the EMA does not track. ``--check-config`` instantiates that
config's model (a baseline config, e.g. ``configs/deformable_detr/deformable_detr_r50_12ep.py``)
and loads the result with ``strict=True``.
"""
import argparse

import torch

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
from detr_plus.engine.checkpoint import load_strictly
from detr_plus.modeling import strip_training_parts


def checkpoint_weights(checkpoint, ema=False):
    """The model's state dict of a checkpoint, or its EMA weights over the model's other tensors."""
    weights = checkpoint.get("model", checkpoint)
    if not ema:
        return weights
    if "ema" not in checkpoint:
        raise KeyError("--ema: the checkpoint has no EMA weights (was train.ema.enabled on?)")
    return {**weights, **checkpoint["ema"]["shadow"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--ema", action="store_true", help="strip the EMA weights instead of the model's")
    parser.add_argument("--check-config", help="a baseline config whose model must load the result strictly")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of --check-config")
    args = parser.parse_intermixed_args(argv)
    if args.overrides and not args.check_config:
        parser.error("key=value overrides are for --check-config")
    weights = checkpoint_weights(torch.load(args.input, map_location="cpu", weights_only=False), args.ema)
    state = strip_training_parts(weights)
    torch.save({"model": state}, args.output)
    print(f"{args.output}: kept {len(state)} tensors, dropped {len(weights) - len(state)} training-only tensors")
    if args.check_config:
        model = load_strictly(args.check_config, state, args.overrides)
        print(f"loads strictly into {type(model).__name__} of {args.check_config}")
    return state


if __name__ == "__main__":
    main()
