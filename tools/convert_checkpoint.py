#!/usr/bin/env python
"""Convert an official Deformable-DETR checkpoint (single-stage, "+ iterative box refinement", or
"++ two-stage" from the authors' model zoo) into a detr_plus checkpoint.

    python tools/convert_checkpoint.py r50_deformable_detr-checkpoint.pth OUT.pth [--check]
    python train_net.py --config-file configs/deformable_detr/deformable_detr_r50_50ep.py --eval-only train.init_checkpoint=OUT.pth

The variant is read from the checkpoint's tensors and the matching config printed. The class
heads' 91 COCO-category-id rows become the 80 contiguous classes (``--keep-class-rows`` keeps them
for a checkpoint trained on other data); details in ``detr_plus/engine/official_checkpoint.py``.
``--check`` loads the result strictly into that config's model.
"""
import argparse

import torch

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
from detr_plus.engine.checkpoint import checkpoint_state_dict, load_strictly
from detr_plus.engine.official_checkpoint import OFFICIAL_VARIANTS, convert_official_deformable_detr, official_variant


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="the official checkpoint ({'model': state dict, ...} or a bare state dict)")
    parser.add_argument("output")
    parser.add_argument("--keep-class-rows", action="store_true", help="the class heads are not COCO's 91 ids: keep their rows")
    parser.add_argument("--check", action="store_true", help="load the result strictly into the matching config's model")
    args = parser.parse_args(argv)
    official = checkpoint_state_dict(args.input)
    variant = official_variant(official)
    state = convert_official_deformable_detr(official, coco_classes=not args.keep_class_rows)
    torch.save({"model": state, "matching_heuristics": False}, args.output)
    config = OFFICIAL_VARIANTS[variant]
    print(f"{args.output}: {len(state)} tensors of the official {variant.replace('_', ' ')} model, for {config} "
          f"(and the configs/deformable_detr/ configs built on it)")
    if args.check:
        load_strictly(config, state, [] if not args.keep_class_rows else
                      [f"model.transformer.num_classes={state['transformer.decoder.class_heads.0.bias'].shape[0]}"])
        print(f"loads strictly into the model of {config}")
    return state


if __name__ == "__main__":
    main()
