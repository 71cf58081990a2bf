#!/usr/bin/env python
"""Write the synthetic shapes data as a user's own COCO-format dataset would be laid out:

    python tools/make_shapes_coco.py OUT_DIR [--train 500] [--val 100] [--image-size 128]

gives ``OUT_DIR/train/*.png``, ``OUT_DIR/val/*.png`` and ``OUT_DIR/annotations/instances_{train,val}.json``
(plain COCO detection json: images, annotations with XYWH boxes, categories), the input of
``configs/custom/*`` (README "Train on your own data").
"""
import argparse
import os

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
from detr_plus.data import generate_shapes_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=500, help="training images")
    parser.add_argument("--val", type=int, default=100, help="validation images")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, count, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        json_file = generate_shapes_dataset(args.out_dir, split, count, seed, args.image_size)
        print(f"{split}: {count} images in {os.path.join(os.path.abspath(args.out_dir), split)}, annotations {json_file}")


if __name__ == "__main__":
    main()
