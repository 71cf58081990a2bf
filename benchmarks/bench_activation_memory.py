"""Memory kept for the backward pass of one training step, with and without activation checkpointing
(``model.transformer.{encoder,decoder}.checkpoint_layers``):

    python benchmarks/bench_activation_memory.py --config-file CONFIG [--image-size 800 1333] [--batch-size 1 2]

It counts the bytes of every tensor autograd saves during the training forward (the losses), each
storage once, the parameters excluded: the activation memory that the backward pass needs, which is
what checkpointing trades for recomputation. It does not depend on the device or on what else the
machine runs (a CPU measures what a GPU would hold), unlike peak RSS or step time. The weights are
random; the images are random with 5 random boxes each.
"""
import argparse
import time

import torch

from detr_plus.engine.config import apply_overrides

CHECKPOINTING = ["model.transformer.encoder.checkpoint_layers=True", "model.transformer.decoder.checkpoint_layers=True"]


def synthetic_inputs(batch_size, height, width, num_classes, seed=0):
    from detectron2.structures import Boxes, Instances

    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        image = (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)
        xy = torch.rand(5, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = (0.05 + 0.25 * torch.rand(5, 2, generator=generator)) * torch.tensor([width, height])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        instances.gt_classes = torch.randint(0, num_classes, (5,), generator=generator)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


def saved_for_backward_bytes(model, batch):
    """(bytes autograd saves in the training forward, each storage once, parameters excluded; seconds)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        losses = model(batch)
    seconds = time.perf_counter() - start
    del losses
    return sum(seen.values()), seconds


def measure(config_file, overrides, batch_size, image_size):
    from detectron2.config import LazyConfig, instantiate

    cfg = apply_overrides(LazyConfig.load(config_file), list(overrides))
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    num_classes = model.transformer.decoder.class_heads[0].out_features
    return saved_for_backward_bytes(model, synthetic_inputs(batch_size, *image_size, num_classes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--image-size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1, 2])
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")
    args = parser.parse_args(argv)
    print(f"{args.config_file}, {args.image_size[0]}x{args.image_size[1]}: MB saved for backward (forward seconds)")
    print("| batch | without checkpointing | with checkpointing | ratio |\n|---|---|---|---|")
    rows = []
    for batch_size in args.batch_size:
        plain, plain_s = measure(args.config_file, args.opts, batch_size, args.image_size)
        checkpointed, ckpt_s = measure(args.config_file, [*args.opts, *CHECKPOINTING], batch_size, args.image_size)
        rows.append((batch_size, plain, checkpointed))
        print(f"| {batch_size} | {plain / 2**20:.0f} MB ({plain_s:.1f} s) | {checkpointed / 2**20:.0f} MB ({ckpt_s:.1f} s) | "
              f"{checkpointed / plain:.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
