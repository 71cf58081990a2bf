#!/usr/bin/env python
"""Model benchmark of a detr_plus LazyConfig: parameters, inference FLOPs, training step time,
inference latency and peak memory; several configs side by side (method vs baseline).

    python benchmarks/bench_model.py [--config-file CONFIG] [key=value ...] [--compare CONFIG2 [key=value ...]]
                                     [--device cpu|cuda] [--steps N] [--synthetic] [--quick] [--json OUT]

Overrides given before any ``--compare`` apply to every config; those right after ``--compare CONFIG2``
apply to CONFIG2 only (``+key=value`` adds a key, as in train_net.py). With several configs each is
measured in its own fresh process, so peak memory is per config; ratios are relative to the first.
"""
import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
from detr_plus_benchmarks.timing import time_calls
import numpy as np
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from detr_plus.engine.config import apply_overrides, resolve_device
from detr_plus.engine.trainer import DetrTrainer

DEFAULT_CONFIG = "configs/shapes/deformable_detr_tiny.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- helpers -------------------------------------------------------------------------------------


def peak_rss_mb():
    """Peak resident set size of this process so far (ru_maxrss: KB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def current_memory_mb(device):
    """CUDA memory allocated now, or this process's current RSS (Linux /proc; None elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def count_params(model):
    from fvcore.nn import parameter_count

    counts = parameter_count(model)
    top = {name: n for name, n in counts.items() if name and "." not in name}
    return dict(total=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                by_module=top)


def default_image_size(cfg, source=(480, 640)):
    """The model input size the config's test augmentation gives a ``source`` image (COCO's most common 480x640)."""
    from detectron2.data import transforms as T

    try:
        augs = instantiate(cfg.dataloader.test.mapper.augmentations)
        aug_input = T.AugInput(np.zeros((*source, 3), dtype=np.uint8))
        T.AugmentationList(augs)(aug_input)
        return tuple(aug_input.image.shape[:2])
    except Exception:
        return source


def num_classes_of(model, default=80):
    decoder = getattr(getattr(model, "transformer", None), "decoder", None)
    head = decoder.class_heads[0] if decoder is not None else None
    return head.out_features if isinstance(head, nn.Linear) else default


def synthetic_batch(n, size, num_classes, seed, with_instances=True, boxes_per_image=5):
    """Random uint8 images of ``size`` with random boxes: the mapped-dict format of the data loaders."""
    gen = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(n):
        item = {"image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8), "height": h, "width": w}
        if with_instances:
            xy = torch.rand(boxes_per_image, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
            wh = (torch.rand(boxes_per_image, 2, generator=gen) * 0.5 + 0.05) * torch.tensor([w, h])
            boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))], dim=1)
            instances = Instances((h, w))
            instances.gt_boxes = Boxes(boxes)
            instances.gt_classes = torch.randint(0, num_classes, (boxes_per_image,), generator=gen)
            item["instances"] = instances
        batch.append(item)
    return batch


def batch_shape(batch):
    sizes = [tuple(x["image"].shape[-2:]) for x in batch]
    return f"{len(batch)} x up to {max(s[0] for s in sizes)}x{max(s[1] for s in sizes)}"


# ---- FLOPs ---------------------------------------------------------------------------------------
class _Traceable(nn.Module):
    """Tensor in, tensors out (jit tracing cannot return Instances): one image, the full inference path."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        h, w = image.shape[-2:]
        out = self.model([{"image": image, "height": h, "width": w}])[0]["instances"]
        return out.pred_boxes.tensor, out.scores, out.pred_classes


def _shape(value):
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _bilinear_sampling_flops(inputs, outputs):
    """detr_plus's deformable-attention sampling (table (rows, C), locations (B, Q, H, L, P, 2)):
    4 bilinear taps per point, one MAC per tap and channel (as grid_sample's count below)."""
    table, locations = _shape(inputs[0]), _shape(inputs[1])
    return 4 * math.prod(locations[:-1]) * table[-1]


def _embedding_bag_flops(inputs, outputs):
    weight, indices = _shape(inputs[0]), _shape(inputs[1])
    return math.prod(indices) * weight[-1]


def _grid_sampler_flops(inputs, outputs):
    """Bilinear sampling: 4 MACs per output element."""
    return 4 * math.prod(_shape(outputs[0]))


def _sdpa_flops(inputs, outputs):
    """softmax(q k^T) v: Lq*Lk*E MACs for the scores and Lq*Lk*Ev for the weighted sum, per batch x head."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


# Ops left uncounted without comment (elementwise, shape and indexing work: small next to the matmuls).
CHEAP_OPS = {f"aten::{op}" for op in (
    "add add_ all any arange bitwise_not cat clamp clamp_ contiguous cos cumsum div div_ eq exp expand fill_ flatten flip "
    "floor floor_divide full ge gt index index_select le linspace log lt masked_fill max maximum mean meshgrid min minimum "
    "mul mul_ ne neg new_zeros ones pad pow prod reciprocal relu remainder repeat reshape resolve_conj resolve_neg rsub "
    "select sigmoid sin slice softmax split sqrt stack sub sum to transpose unsqueeze view where zeros zeros_like").split()}

EXTRA_FLOP_HANDLES = {
    "prim::PythonOp._BilinearSampling": _bilinear_sampling_flops,
    "aten::embedding_bag": _embedding_bag_flops,
    "aten::_embedding_bag": _embedding_bag_flops,
    "aten::grid_sampler": _grid_sampler_flops,
    "aten::scaled_dot_product_attention": _sdpa_flops,
}


def count_flops(model, image):
    """fvcore FlopCountAnalysis of one inference (1 fused multiply-add = 1 flop, fvcore's convention)."""
    import warnings

    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(_Traceable(model), (image,)).set_op_handle(**EXTRA_FLOP_HANDLES)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            total = analysis.total()
            by_module = {name[len("model."):]: n for name, n in analysis.by_module().items()
                         if name.startswith("model.") and name.count(".") == 1}
            unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return dict(total=total, by_module=by_module, by_operator=dict(analysis.by_operator()), uncounted_ops=unsupported)


# ---- one config ----------------------------------------------------------------------------------

def load_config(config_file, overrides, args):
    cfg = LazyConfig.load(config_file)
    cfg = apply_overrides(cfg, list(overrides))
    if args.batch_size:
        cfg.dataloader.train.total_batch_size = args.batch_size
    return cfg


def measure(config_file, overrides, args):
    from detectron2.utils.env import seed_all_rng

    device = torch.device(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(config_file, overrides, args)
    seed = int(cfg.train.get("seed", 0)) if "train" in cfg else 0
    seed_all_rng(seed)
    result = dict(config=config_file, overrides=list(overrides), device=str(device), threads=torch.get_num_threads())
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)

    model = instantiate(cfg.model).to(device)
    result["params"] = count_params(model)

    # Inputs: one training batch (mapped dicts) and one inference image.
    if args.synthetic or args.image_size:
        size = tuple(args.image_size) if args.image_size else default_image_size(cfg)
        n = cfg.dataloader.train.total_batch_size if "dataloader" in cfg and "train" in cfg.dataloader else 2
        train_batch = synthetic_batch(n, size, num_classes_of(model), seed)
        infer_inputs = synthetic_batch(1, size, num_classes_of(model), seed + 1, with_instances=False)
        result["data"] = f"synthetic images {size[0]}x{size[1]}, 5 random boxes each"
    else:
        train_batch = next(iter(instantiate(cfg.dataloader.train)))
        result["data"] = f"first batch of dataloader.train ({cfg.dataloader.train.dataset}); "
        if "test" in cfg.dataloader:
            infer_inputs = next(iter(instantiate(cfg.dataloader.test)))[:1]
            result["data"] += "first image of dataloader.test"
        else:
            infer_inputs = [{k: v for k, v in train_batch[0].items() if k != "instances"}]
            result["data"] += "first training image for inference (no dataloader.test)"
    result["train_batch"] = batch_shape(train_batch)
    result["infer_image"] = "x".join(str(s) for s in infer_inputs[0]["image"].shape[-2:])

    result["memory_start_mb"] = current_memory_mb(device)

    # Inference latency: eval mode, no_grad, batch 1 (preprocessing and post-processing included).
    model.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def infer():
        with torch.no_grad():
            model(infer_inputs)

    result["infer"] = time_calls(infer, args.infer_repeats, args.warmup, device)
    result["peak_infer_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()

    # Training step: DetrTrainer.run_step (forward, losses, backward, grad clipping, AdamW step), as in
    # train_net.py, on the same batch every step (no data loading); no hooks (LR schedule, EMA, writers).
    model.train()
    train_cfg = cfg.get("train", {})
    cfg.optimizer.model = model
    optimizer = instantiate(cfg.optimizer)
    if getattr(model, "requires_teacher", False):  # as train_net.py: the EMA's frozen copy runs every step
        from detr_plus.engine.ema import ModelEMA

        model.attach_teacher(ModelEMA(model, train_cfg.get("ema", {}).get("decay", 0.9996)).module)
    amp = bool(train_cfg.get("amp", {}).get("enabled", False)) and device.type == "cuda"
    trainer = DetrTrainer(model, itertools.repeat(train_batch), optimizer, train_cfg.get("clip_grad_norm", 0.0), amp,
                          train_cfg.get("amp", {}).get("dtype", "auto"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with EventStorage(0) as storage:
        trainer.storage = storage
        step = itertools.count()

        def train_step():
            trainer.iter = storage.iter = next(step)
            trainer.run_step()

        result["train_step"] = time_calls(train_step, args.steps, args.warmup, device)
    result["amp"] = trainer.amp
    result["peak_train_mb"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    result["memory_kind"] = ("CUDA max_memory_allocated (absolute, includes weights; training also gradients and AdamW state; "
                             "'before measuring' = memory_allocated with the model and inputs built)"
                             if device.type == "cuda" else
                             "CPU process peak RSS so far (resource.getrusage ru_maxrss): the training figure is the "
                             "whole process peak, inference ran first; 'before measuring' = RSS with the model and inputs built")
    del trainer, optimizer

    if args.no_flops:
        result["flops"] = dict(error="skipped (--no-flops)")
    else:
        try:
            image = infer_inputs[0]["image"].to(device)
            result["flops"] = count_flops(model, image)
        except Exception as e:  # tracing a detection model can fail in many ways; the rest still stands
            result["flops"] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    return result


# ---- report --------------------------------------------------------------------------------------
def label_of(result):
    name = os.path.relpath(os.path.abspath(result["config"]), REPO)
    return name + (f" [{' '.join(result['overrides'])}]" if result["overrides"] else "")


def table_rows(results):
    """(metric, [value per config as (display, number or None)])."""
    def ms(key):
        return lambda r: (f"{r[key]['median_ms']:.1f} ({r[key]['p25_ms']:.1f}-{r[key]['p75_ms']:.1f})", r[key]["median_ms"])

    def mega(n):
        return (f"{n / 1e6:.3f}", n)

    def flops(get):
        def cell(r):
            f = r["flops"]
            if "error" in f:
                return (f"n/a ({f['error']})", None)
            n = get(f)
            return ("n/a", None) if n is None else (f"{n / 1e9:.3f}", n)
        return cell

    rows = [
        ("parameters, total (M)", lambda r: mega(r["params"]["total"])),
        ("parameters, trainable (M)", lambda r: mega(r["params"]["trainable"])),
    ]
    for name in dict.fromkeys(n for r in results for n in r["params"]["by_module"]):
        rows.append((f"parameters, {name} (M)", lambda r, n=name: mega(r["params"]["by_module"][n]) if n in r["params"]["by_module"] else ("-", None)))
    rows.append(("inference GFLOPs, 1 image (fvcore, FMA = 1)", flops(lambda f: f["total"])))
    for name in dict.fromkeys(n for r in results for n in r["flops"].get("by_module", {})):
        if any(r["flops"].get("by_module", {}).get(name) for r in results):
            rows.append((f"inference GFLOPs, {name}", flops(lambda f, n=name: f["by_module"].get(n))))
    rows += [
        ("training step ms, median (IQR)", ms("train_step")),
        ("inference ms / image, median (IQR)", ms("infer")),
        ("peak memory, training (MB)", lambda r: (f"{r['peak_train_mb']:.0f}", r["peak_train_mb"])),
        ("peak memory, inference (MB)", lambda r: (f"{r['peak_infer_mb']:.0f}", r["peak_infer_mb"])),
        ("memory before measuring (MB)", lambda r: ("n/a", None) if r.get("memory_start_mb") is None
         else (f"{r['memory_start_mb']:.0f}", r["memory_start_mb"])),
        ("training batch", lambda r: (r["train_batch"], None)),
        ("inference image", lambda r: (r["infer_image"], None)),
    ]
    return [(metric, [cell(r) for r in results]) for metric, cell in rows]


def markdown(results):
    labels = [label_of(r) for r in results]
    ratio_labels = [f"ratio {i + 1}/1" for i in range(1, len(results))]
    lines = ["| metric | " + " | ".join(f"({i + 1}) {label}" for i, label in enumerate(labels))
             + "".join(f" | {r}" for r in ratio_labels) + " |",
             "|---" * (1 + len(labels) + len(ratio_labels)) + "|"]
    for metric, cells in table_rows(results):
        ratios = []
        for cell in cells[1:]:
            base = cells[0][1]
            ratios.append(f"{cell[1] / base:.2f}" if cell[1] is not None and base else "")
        lines.append(f"| {metric} | " + " | ".join(c[0] for c in cells) + "".join(f" | {x}" for x in ratios) + " |")
    return "\n".join(lines)


def notes(results, args):
    r0 = results[0]
    out = [f"device: {r0['device']}{' (' + r0['device_name'] + ')' if 'device_name' in r0 else ''}, "
           f"torch {torch.__version__}, {r0['threads']} CPU threads, {os.cpu_count()} CPUs"
           + (f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""),
           f"data: {r0['data']}",
           *(["WARNING: the CPUs are busy with other work; timings are unreliable (--threads 1 suffers least)"]
             if r0["device"] == "cpu" and hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1) * 0.75
             else []),
           f"training step: median of {args.steps} steps after {args.warmup} warm-up "
           f"(DetrTrainer.run_step{', AMP' if r0.get('amp') else ''}); inference: median of {args.infer_repeats} "
           f"calls after {args.warmup} warm-up, batch 1, eval + no_grad",
           f"peak memory: {r0['memory_kind']}"]
    for i, r in enumerate(results):
        uncounted = r["flops"].get("uncounted_ops", {})
        other = {k: v for k, v in uncounted.items() if k not in CHEAP_OPS}
        cheap = sum(v for k, v in uncounted.items() if k in CHEAP_OPS)
        if uncounted:
            out.append(f"({i + 1}) FLOPs leave out {cheap} elementwise/indexing op calls"
                       + (" and: " + ", ".join(f"{k} x{v}" for k, v in sorted(other.items(), key=lambda kv: -kv[1])) if other else "")
                       + " (full list in --json)")
    return out


# ---- driver --------------------------------------------------------------------------------------
def worker_cmd(config_file, overrides, args, out_file):
    cmd = [sys.executable, os.path.abspath(__file__), "--config-file", config_file, "--device", args.device,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--infer-repeats", str(args.infer_repeats),
           "--_worker", out_file]
    for flag in ("synthetic", "no_flops"):
        if getattr(args, flag):
            cmd.append("--" + flag.replace("_", "-"))
    if args.image_size:
        cmd += ["--image-size", *map(str, args.image_size)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd + list(overrides)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", action="append", default=None, metavar="CONFIG",
                        help=f"LazyConfig (default {DEFAULT_CONFIG}); repeat to compare several")
    parser.add_argument("--compare", action="append", nargs="+", default=[], metavar="CONFIG2 [key=value",
                        help="another config (with overrides of its own) to put side by side; repeatable")
    parser.add_argument("opts", nargs="*", default=[], help="key=value overrides for every config")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20, --quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps / calls first (default 3, --quick 1)")
    parser.add_argument("--infer-repeats", type=int, default=None, help="timed inference calls (default 20, --quick 3)")
    parser.add_argument("--synthetic", action="store_true", help="random images (and boxes) instead of the data loaders")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                        help="synthetic image size (implies --synthetic; default: the config's test resize of 480x640)")
    parser.add_argument("--batch-size", type=int, help="override dataloader.train.total_batch_size")
    parser.add_argument("--quick", action="store_true", help="smoke run: --synthetic, batch 2, 2 steps, 3 inference calls")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (a jit trace)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--in-process", action="store_true", help="measure several configs in this process (memory mixes)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args()

    if args.quick:
        args.synthetic = True
        args.batch_size = args.batch_size or 2
    args.steps = args.steps if args.steps is not None else (2 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.infer_repeats = args.infer_repeats if args.infer_repeats is not None else (3 if args.quick else 20)
    if args.steps < 1 or args.infer_repeats < 1:
        parser.error("--steps and --infer-repeats must be >= 1")

    if args._worker:
        result = measure(args.config_file[0], args.opts, args)
        with open(args._worker, "w") as f:
            json.dump(result, f)
        return 0

    runs = [(c, list(args.opts)) for c in (args.config_file or ([] if args.compare else [DEFAULT_CONFIG]))]
    if args.compare and not args.config_file:
        runs.insert(0, (DEFAULT_CONFIG, list(args.opts)))
    runs += [(c[0], list(args.opts) + c[1:]) for c in args.compare]

    results = []
    for config_file, overrides in runs:
        print(f"== {config_file} {' '.join(overrides)}", file=sys.stderr, flush=True)
        if len(runs) == 1 or args.in_process:
            results.append(measure(config_file, overrides, args))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out_file = os.path.join(tmp, "result.json")
            proc = subprocess.run(worker_cmd(config_file, overrides, args, out_file))
            if proc.returncode != 0 or not os.path.exists(out_file):
                print(f"benchmark of {config_file} failed (exit code {proc.returncode})", file=sys.stderr)
                return proc.returncode or 1
            with open(out_file) as f:
                results.append(json.load(f))

    print("\n".join(notes(results, args)))
    print()
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, steps=args.steps, warmup=args.warmup, infer_repeats=args.infer_repeats,
                           torch=torch.__version__), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
