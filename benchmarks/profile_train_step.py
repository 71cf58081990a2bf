#!/usr/bin/env python
"""Where a training step's time goes, part by part, for one or more LazyConfigs.

    python benchmarks/profile_train_step.py                                  # the tiny shapes config
    python benchmarks/profile_train_step.py --config-file A.py [key=value ...] --compare B.py [key=value ...]
    python benchmarks/profile_train_step.py --steps 20 --threads 2 --output output/profile_train_step.png

``DetrTrainer.run_step`` exactly as ``train_net.py`` runs it, on the first batch of
``dataloader.train`` every step (no data loading, no hooks), with wall-clock timers around its parts:

| part | what is timed |
|---|---|
| backbone | backbone, neck and position embedding (``DeformableDETR.extract_features``) |
| encoder | ``DeformableTransformer.encode`` |
| query selection | ``select_queries`` (the two-stage top-k, every route's own selection) |
| decoder | ``decode`` (every query stream: primary, variants, groups) |
| teacher | the EMA teacher's pass, when the method has one (OD-DETR) |
| matching | every matcher call (Hungarian, one-to-many), inside or outside the losses |
| losses | ``DeformableDETR.losses`` without the matching inside it |
| backward | ``loss.backward()`` |
| optimizer step | gradient clipping and the optimizer's ``step`` / ``zero_grad`` |
| other | the rest of the step: pre-processing, targets, metric writing |

Times are exclusive (a matcher call inside the losses counts as matching only); median over the
steps per part, so the parts need not add up exactly to the median step. Prints a table per config
(and the ratio to the first config) and writes a PNG bar chart (``--output``).
"""
import argparse
import contextlib
import itertools
import os
import statistics
import time
from collections import defaultdict

import torch

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
from detr_plus_benchmarks.bench_model import load_config, resolve_device
from detr_plus_benchmarks.timing import sync

PARTS = ("backbone", "encoder", "query selection", "decoder", "teacher", "matching", "losses", "backward",
         "optimizer step", "other")
DEFAULT_CONFIG = "configs/shapes/deformable_detr_tiny.py"


class PartClock:
    """Exclusive wall time per named part: entering a part pauses the enclosing one."""

    def __init__(self, device):
        self.device, self.stack, self.totals = device, [], defaultdict(float)

    def _switch(self):
        sync(self.device)
        now = time.perf_counter()
        if self.stack:
            self.totals[self.stack[-1][0]] += now - self.stack[-1][1]
        return now

    @contextlib.contextmanager
    def part(self, name):
        now = self._switch()
        self.stack.append([name, now])
        try:
            yield
        finally:
            self._switch()
            self.stack.pop()
            if self.stack:
                self.stack[-1][1] = time.perf_counter()

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        return timed


@contextlib.contextmanager
def instrumented(model, trainer, clock):
    """Time the parts by wrapping methods (restored on exit): instance methods of this model and its
    teacher, and the matchers' classes (plain callables, so their class ``__call__``)."""
    from detr_plus.modeling import matcher as matcher_module

    patches = []

    def patch(owner, attr, name):
        own = vars(owner)  # what to put back: the owner's own attribute, or nothing (an instance method)
        patches.append((owner, attr, attr in own, own.get(attr)))
        setattr(owner, attr, clock.wrap(name, getattr(owner, attr)))

    patch(model, "extract_features", "backbone")
    patch(model.transformer, "encode", "encoder")
    patch(model.transformer, "select_queries", "query selection")
    patch(model.transformer, "decode", "decoder")
    patch(model, "losses", "losses")
    if getattr(model, "teacher", None) is not None:
        patch(model.teacher, "detection_pass", "teacher")
    for cls in [c for c in vars(matcher_module).values() if isinstance(c, type) and "__call__" in vars(c)]:
        patch(cls, "__call__", "matching")
    patch(trainer.optimizer, "step", "optimizer step")
    patch(trainer.optimizer, "zero_grad", "optimizer step")
    patch(torch.nn.utils, "clip_grad_norm_", "optimizer step")
    patch(torch.Tensor, "backward", "backward")
    try:
        yield
    finally:
        for owner, attr, had_own, original in reversed(patches):
            if had_own:
                setattr(owner, attr, original)
            else:
                delattr(owner, attr)


def profile(config_file, overrides, args):
    from detectron2.config import instantiate
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    from detr_plus.engine.trainer import DetrTrainer

    device = torch.device(resolve_device(args.device))
    cfg = load_config(config_file, overrides, args)
    seed_all_rng(int(cfg.train.get("seed", 0)))
    model = instantiate(cfg.model).to(device).train()
    cfg.optimizer.model = model
    optimizer = instantiate(cfg.optimizer)
    if getattr(model, "requires_teacher", False):  # as train_net.py: the EMA's frozen copy runs every step
        from detr_plus.engine.ema import ModelEMA

        model.attach_teacher(ModelEMA(model, cfg.train.get("ema", {}).get("decay", 0.9996)).module)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    amp = bool(cfg.train.get("amp", {}).get("enabled", False)) and device.type == "cuda"
    trainer = DetrTrainer(model, itertools.repeat(batch), optimizer, cfg.train.get("clip_grad_norm", 0.0), amp)
    per_part, steps = defaultdict(list), []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for i in range(args.warmup + args.steps):
            trainer.iter = storage.iter = i
            clock = PartClock(device)
            with instrumented(model, trainer, clock):
                sync(device)
                start = time.perf_counter()
                with clock.part("other"):
                    trainer.run_step()
                sync(device)
                total = time.perf_counter() - start
            if i >= args.warmup:
                steps.append(total)
                for part in PARTS:
                    per_part[part].append(clock.totals.get(part, 0.0))
    return dict(
        label=" ".join([os.path.basename(config_file)] + list(overrides)),
        step_ms=1e3 * statistics.median(steps),
        parts_ms={p: 1e3 * statistics.median(v) for p, v in per_part.items()},
        batch=f"{len(batch)} images {tuple(batch[0]['image'].shape[-2:])}",
    )


def print_table(results):
    head = "| part | " + " | ".join(f"{r['label']}: ms (%)" for r in results)
    ratio = len(results) > 1
    print(head + (" | " + " | ".join(f"x first ({r['label']})" for r in results[1:]) if ratio else "") + " |")
    print("|---" * (1 + len(results) + (len(results) - 1 if ratio else 0)) + "|")
    for part in PARTS + ("step (median)",):
        if part != "step (median)" and all(r["parts_ms"].get(part, 0.0) == 0.0 for r in results):
            continue
        value = (lambda r: r["step_ms"]) if part == "step (median)" else (lambda r: r["parts_ms"].get(part, 0.0))
        cells = [f"{value(r):.1f} ({100 * value(r) / r['step_ms']:.0f}%)" for r in results]
        ratios = [f"{value(r) / value(results[0]):.2f}" if value(results[0]) > 0 else "n/a" for r in results[1:]]
        print(f"| {part} | " + " | ".join(cells + ratios) + " |")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in PARTS if any(r["parts_ms"].get(p, 0.0) > 0 for r in results)]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(parts) * len(results)))
    height = 0.8 / len(results)
    for i, r in enumerate(results):
        ys = [j + i * height for j in range(len(parts))]
        ax.barh(ys, [r["parts_ms"].get(p, 0.0) for p in parts], height=height, label=f"{r['label']} ({r['step_ms']:.0f} ms/step)")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(parts))], parts)
    ax.invert_yaxis()
    ax.set_xlabel("ms per training step (median, exclusive)")
    ax.set_title("Training step by part")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def split_configs(argv):
    """[--config-file A k=v ... --compare B k=v ...] -> [(A, [k=v]), (B, [k=v])]."""
    configs = []
    for token in argv:
        if token in ("--config-file", "--compare"):
            configs.append([None, []])
            continue
        if configs and configs[-1][0] is None:
            configs[-1][0] = token
        elif configs:
            configs[-1][1].append(token)
        else:
            raise SystemExit(f"override {token!r} before any --config-file")
    return [(c, o) for c, o in configs] or [(DEFAULT_CONFIG, [])]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps per config (default 10)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, help="sets dataloader.train.total_batch_size")
    parser.add_argument("--output", default="output/profile_train_step.png", help="PNG bar chart")
    args, rest = parser.parse_known_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for config_file, overrides in split_configs(rest):
        if not os.path.isfile(config_file):
            raise SystemExit(f"config file not found: {config_file}")
        results.append(profile(config_file, overrides, args))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads{load}; {args.steps} steps after {args.warmup} "
          f"warm-up; batch: {results[0]['batch']}\n")
    print_table(results)
    plot(results, args.output)
    print(f"\nbar chart: {os.path.abspath(args.output)}")


if __name__ == "__main__":
    main()
