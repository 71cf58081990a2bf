#!/usr/bin/env python
"""Average the model weights of several checkpoints of one run (e.g. its last three) into one file
that train_net.py --eval-only and tools/demo.py load like any checkpoint.

    python tools/average_checkpoints.py output/run/model_0079999.pth output/run/model_0084999.pth \
        output/run/model_final.pth --output output/run/model_averaged.pth
"""
import argparse
import os

import torch

from detr_plus.engine.checkpoint import average_checkpoints


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (.pth) of the same model")
    parser.add_argument("--output", required=True, help="the averaged checkpoint to write")
    args = parser.parse_args(argv)
    if os.path.abspath(args.output) in {os.path.abspath(p) for p in args.checkpoints}:
        parser.error(f"--output {args.output} is one of the inputs: choose another file")
    averaged = average_checkpoints(args.checkpoints)
    torch.save({"model": averaged, "averaged_from": list(args.checkpoints)}, args.output)
    print(f"Averaged {len(args.checkpoints)} checkpoints ({len(averaged)} tensors): {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
