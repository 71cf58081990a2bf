"""Memory kept for the backward pass of one training step, with and without activation checkpointing
(``model.transformer.{encoder,decoder}.checkpoint_layers``):

    python benchmarks/bench_activation_memory.py --config-file CONFIG [--image-size 800 1333] [--batch-size 1 2] [--step]

It counts the bytes of every tensor autograd saves during the training forward (the losses), each
storage once, the parameters excluded: the activation memory that the backward pass needs, which is
what checkpointing trades for recomputation. It does not depend on the device or on what else the
machine runs (a CPU measures what a GPU would hold), unlike peak RSS or step time. The weights are
random; the images are random with 5 random boxes each.

``--step`` adds what a whole training step (forward and backward) costs on this machine: its time and
the peak resident memory of the process during the step (``VmHWM``, reset before it) above what it
held before (model, inputs, libraries), each setting in a fresh process. These
depend on the machine and on what else it runs. A config with a timm backbone checkpoints its stages
too (``model.backbone.grad_checkpointing``).
"""
import argparse
import json
import subprocess
import sys
import time

import torch

from detr_plus.engine.config import apply_overrides

CHECKPOINTING = ["model.transformer.encoder.checkpoint_layers=True", "model.transformer.decoder.checkpoint_layers=True"]


def synthetic_inputs(batch_size, height, width, num_classes, seed=0, with_masks=False):
    """Random images, 5 random boxes each (and their rectangles as masks ``with_masks``)."""
    from detectron2.structures import BitMasks, Boxes, Instances

    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        image = (torch.rand(3, height, width, generator=generator) * 255).to(torch.uint8)
        xy = torch.rand(5, 2, generator=generator) * torch.tensor([width * 0.7, height * 0.7])
        wh = (0.05 + 0.25 * torch.rand(5, 2, generator=generator)) * torch.tensor([width, height])
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        instances.gt_classes = torch.randint(0, num_classes, (5,), generator=generator)
        if with_masks:
            masks = torch.zeros(5, height, width, dtype=torch.bool)
            for mask, (x0, y0, x1, y1) in zip(masks, instances.gt_boxes.tensor.long().tolist()):
                mask[y0:y1, x0:x1] = True
            instances.gt_masks = BitMasks(masks)
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


def checkpointing_overrides(config_file):
    """The switches that checkpoint every layer the config has: encoder, decoder, timm backbone stages."""
    from detectron2.config import LazyConfig

    backbone = LazyConfig.load(config_file).model.backbone
    return CHECKPOINTING + (["model.backbone.grad_checkpointing=True"] if "grad_checkpointing" in backbone else [])


def build(config_file, overrides, batch_size, image_size):
    from detectron2.config import LazyConfig, instantiate

    cfg = apply_overrides(LazyConfig.load(config_file), list(overrides))
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    num_classes = model.transformer.decoder.class_heads[0].out_features
    return model, synthetic_inputs(batch_size, *image_size, num_classes, with_masks="mask" in model.heads)


def measure(config_file, overrides, batch_size, image_size):
    return saved_for_backward_bytes(*build(config_file, overrides, batch_size, image_size))


def rss_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss():
    """Peak RSS := current RSS (Linux 4.0 and later: 5 written to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def one_step(config_file, overrides, batch_size, image_size):
    """{"step_s", "peak_growth_bytes", "peak_bytes"} of one training step in this process: the peak
    RSS during the step above the RSS before it (model, inputs and libraries)."""
    model, batch = build(config_file, overrides, batch_size, image_size)
    before = rss_bytes("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    sum(model(batch).values()).backward()
    seconds = time.perf_counter() - start
    peak = rss_bytes("VmHWM")
    return {"step_s": seconds, "peak_growth_bytes": peak - before, "peak_bytes": peak}


def saved_bytes(config_file, overrides, batch_size, image_size):
    """{"saved_bytes", "forward_s"} of ``measure`` (JSON-ready, for a child process)."""
    saved, seconds = measure(config_file, overrides, batch_size, image_size)
    return {"saved_bytes": saved, "forward_s": seconds}


def in_child(function, config_file, overrides, batch_size, image_size):
    """``function`` (``one_step`` or ``saved_bytes``) in a fresh Python process (its own memory): its
    dict, or None when the process was killed (out of memory)."""
    code = (f"import json, sys; from bench_activation_memory import {function}; "
            f"print(json.dumps({function}(sys.argv[1], sys.argv[4:], int(sys.argv[2]), [int(v) for v in sys.argv[3].split('x')])))")
    argv = [sys.executable, "-c", code, config_file, str(batch_size), f"{image_size[0]}x{image_size[1]}", *overrides]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=__file__.rsplit("/", 1)[0])
    if done.returncode < 0 or done.returncode == 137:  # killed by a signal: the kernel's OOM killer here
        return None
    if done.returncode != 0:
        raise RuntimeError(f"{function} of {config_file} (batch {batch_size}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_in_child(config_file, overrides, batch_size, image_size):
    return in_child("one_step", config_file, overrides, batch_size, image_size)


def format_row(row, with_step):
    def saved(r):
        return "killed (out of memory)" if r is None else f"{r['saved_bytes'] / 2**20:.0f} MB ({r['forward_s']:.1f} s)"

    def step(r):
        return "killed (out of memory)" if r is None else f"{r['step_s']:.1f} s, {r['peak_growth_bytes'] / 2**20:.0f} / {r['peak_bytes'] / 2**20:.0f} MB"

    plain, ckpt = row["plain"], row["checkpointed"]
    ratio = f"{ckpt['saved_bytes'] / plain['saved_bytes']:.2f}" if plain and ckpt else "-"
    line = f"| {row['batch']} | {saved(plain)} | {saved(ckpt)} | {ratio} |"
    if with_step:
        line += f" step: {step(row['plain_step'])} vs {step(row['checkpointed_step'])}"
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--image-size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"))
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--step", action="store_true", help="also time one training step and its peak RSS (a child process each)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides key=value")
    args = parser.parse_args(argv)
    checkpointing = checkpointing_overrides(args.config_file)
    print(f"{args.config_file}, {args.image_size[0]}x{args.image_size[1]}: MB saved for backward (forward seconds)"
          + ("; one training step: seconds, peak RSS growth / peak RSS" if args.step else ""))
    print("| batch | without checkpointing | with checkpointing | ratio |\n|---|---|---|---|")
    rows = []
    for batch_size in args.batch_size:  # each measure in a fresh process: the big ones may not fit beside another
        row = {"batch": batch_size}
        for name, opts in (("plain", args.opts), ("checkpointed", [*args.opts, *checkpointing])):
            row[name] = in_child("saved_bytes", args.config_file, opts, batch_size, args.image_size)
            if args.step:
                row[name + "_step"] = step_in_child(args.config_file, opts, batch_size, args.image_size)
        rows.append(row)
        print(format_row(row, args.step), flush=True)
    return rows


if __name__ == "__main__":
    main()
