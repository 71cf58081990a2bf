#!/usr/bin/env python
"""Everything the GPU path needs checked, on one GPU, in one run, into one markdown report.

    bash tools/gpu_check.sh                     # = python tools/gpu_check.py --out benchmarks/gpu_check.md
    python tools/gpu_check.py --checks op_bench train_step --out /tmp/report.md

Checks (``--checks``, all by default, each time-boxed; a failing check is reported, not fatal):

* ``op_tests``: the deformable-attention tests on CUDA (the Triton kernel compiled, not interpreted);
* ``op_bench``: ``benchmarks/bench_ms_deform_attn.py`` at the COCO encoder (batch 2, levels
  100x167 .. 13x21, every position a query) and decoder (900 queries) shapes, forward and
  forward + backward, float32 and bfloat16, for ``triton``, ``bilinear_gather`` and ``grid_sample``;
* ``train_step``: one AMP training step of the COCO-size Deformable-DETR++ (R50, 800 x 1333, batch
  2): host syncs (``HostSyncCounter`` and ``torch.cuda.set_sync_debug_mode``), kernel launches and
  the deformable attention's share of the step (``torch.profiler``);
* ``tiny_amp``: ``--iters`` (50) AMP iterations of every tiny config (the baselines' and every
  method's), on synthetic 256 x 320 images;
* ``ddp``: a 1-GPU DistributedDataParallel start (NCCL), three steps of the tiny ++ config.

Nothing is downloaded (random weights, synthetic images). ``--device cpu --quick`` runs the same
code at small sizes on CPU (without the Triton kernel): how the tests check the script itself.
"""
import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHECKS = ("op_tests", "op_bench", "train_step", "tiny_amp", "ddp")
COCO_LEVELS = "100x167,50x84,25x42,13x21"  # an 800 x 1333 image at strides 8 .. 64
QUICK_LEVELS = "16x20,8x10,4x5,2x3"
STEP_CONFIG = "configs/deformable_detr/deformable_detr_plusplus_r50_12ep.py"
GOAL_OP_SPEEDUP, GOAL_STEP_RATIO = 3.0, 1.2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "gpu_check.md"), help="the markdown report")
    parser.add_argument("--device", default="cuda", help="cuda (the point of it) or cpu (to test this script)")
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (tests of this script)")
    parser.add_argument("--iters", type=int, default=50, help="tiny_amp: iterations per config")
    parser.add_argument("--configs", nargs="+", help="tiny_amp: these configs instead of every tiny config")
    parser.add_argument("--timeout", type=int, default=150, help="seconds for each subprocess (op_tests, op_bench per dtype)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --quick to test the script)")
    return args


def markdown_table(rows, columns):
    """Rows (dicts) as a markdown table of ``columns`` (missing cells empty; floats to 3 significant digits)."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_report(path, header, sections):
    """``sections``: (title, markdown) pairs, written under ``header``; returns the text."""
    text = "\n\n".join([header] + [f"## {title}\n\n{body}" for title, body in sections]) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text


def environment(device):
    parts = [f"torch {torch.__version__}"]
    with contextlib.suppress(ImportError):
        import triton

        parts.append(f"triton {triton.__version__}")
    if device.type == "cuda":
        parts.append(f"{torch.cuda.get_device_name(device)} ({torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB)")
    else:
        parts.append(f"{device.type}, {torch.get_num_threads()} threads")
    return ", ".join(parts)


# ---- checks: each returns markdown ----------------------------------------------------------------
def check_op_tests(args, device):
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_ms_deform_attn_triton.py", "tests/test_ms_deform_attn.py"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    devices = "CUDA (compiled)" if device.type == "cuda" else "CPU (interpreter)"
    return markdown_table([{"tests": " ".join(cmd[3:]), "Triton kernel on": devices, "result": summary,
                            "ok": proc.returncode == 0}], ["tests", "Triton kernel on", "result", "ok"])


def check_op_bench(args, device):
    rows = []
    impls = ["bilinear_gather", "grid_sample"] + (["triton"] if device.type == "cuda" else [])
    for dtype in ("float32", "bfloat16"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            cmd = [sys.executable, "benchmarks/bench_ms_deform_attn.py", "--device", str(device), "--dtype", dtype,
                   "--levels", QUICK_LEVELS if args.quick else COCO_LEVELS, "--batch", "2",
                   "--decoder-queries", "50" if args.quick else "900", "--impl", *impls, "--json", str(out)]
            if args.quick:
                cmd += ["--repeats", "2", "--warmup", "1", "--no-memory"]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
            if not out.exists():
                rows.append({"dtype": dtype, "impl": "(failed)", "check": (proc.stderr or proc.stdout).strip()[-300:]})
                continue
            result = json.loads(out.read_text())
        rows += op_rows(result["rows"], dtype)
    return markdown_table(rows, ["shape", "dtype", "impl", "fwd ms", "fwd+bwd ms", "fwd+bwd vs grid_sample", "check"])


def op_rows(bench_rows, dtype):
    """The benchmark's rows for the report, with each implementation's forward + backward speed-up
    over ``grid_sample`` on the same shape (the goal: Triton >= 3x at both shapes)."""
    timed = [r for r in bench_rows if r["shape"] != "tiny"]
    reference = {r["shape"]: r["fwd_bwd"]["median_ms"] for r in timed if r["impl"] == "grid_sample" and "fwd_bwd" in r}
    rows = []
    for r in timed:
        if "error" in r:
            rows.append({"shape": r["shape"], "dtype": dtype, "impl": r["impl"], "check": r["error"]})
            continue
        speedup = reference[r["shape"]] / r["fwd_bwd"]["median_ms"] if r["shape"] in reference else None
        goal = "" if r["impl"] != "triton" or speedup is None else (" (goal met)" if speedup >= GOAL_OP_SPEEDUP else " (goal: 3x)")
        rows.append({"shape": r["shape"], "dtype": dtype, "impl": r["impl"], "fwd ms": r["fwd"]["median_ms"],
                     "fwd+bwd ms": r["fwd_bwd"]["median_ms"], "fwd+bwd vs grid_sample": None if speedup is None else f"{speedup:.2f}x{goal}",
                     "check": {True: "ok", False: "FAIL", None: ""}[r.get("check_ok")]})
    return rows


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(model, batch, amp=True):
    """The configs' AdamW (configs/common/optim.py), clipping 0.1 and AMP, on ``batch`` every step."""
    from detectron2.config import LazyConfig, instantiate

    from detr_plus.engine.trainer import DetrTrainer

    optim_cfg = LazyConfig.load(str(REPO / "configs/common/optim.py")).AdamW
    optim_cfg.model = getattr(model, "module", model)
    return DetrTrainer(model, iter(lambda: batch, None), instantiate(optim_cfg), 0.1, amp=amp)


def _build(config, device, quick):
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(str(REPO / config))
    if quick:  # test of the script: a small model
        sys.path.insert(0, str(REPO / "tests"))
        from model_utils import shrink_model_config

        cfg.model = shrink_model_config(cfg.model)
    model = instantiate(cfg.model).to(device).train()
    if getattr(model, "requires_teacher", False):
        from detr_plus.engine.ema import ModelEMA

        model.attach_teacher(ModelEMA(model, 0.9996).module)
    return model


def _steps(trainer, n, start=0):
    from detectron2.utils.events import EventStorage

    with EventStorage(start) as storage:
        trainer.storage = storage
        for i in range(start, start + n):
            trainer.iter = storage.iter = i
            trainer.run_step()
        return [v for v, _ in storage.history("total_loss").values()]


OP_EVENTS = ("_TritonSampling", "_TritonSamplingBackward", "_BilinearSampling", "_BilinearSamplingBackward")


def deformable_attention_ms(events, device):
    """The deformable attention's time in a profiled step: its autograd Function's forward and
    backward events (device time on CUDA, else CPU time); on CUDA, if the Triton launches are not
    attributed to them, the kernel's own events."""
    if device.type != "cuda":
        return sum(e.cpu_time_total for e in events if e.key in OP_EVENTS) / 1e3
    total = sum(e.device_time_total for e in events if e.key in OP_EVENTS)
    if total == 0:
        total = sum(e.device_time_total for e in events if "_sampling_kernel" in e.key)
    return total / 1e3


def check_train_step(args, device):
    from detr_plus.engine.host_syncs import HostSyncCounter
    from detr_plus_benchmarks.bench_model import num_classes_of, synthetic_batch

    size = (160, 224) if args.quick else (800, 1333)
    model = _build(STEP_CONFIG, device, args.quick)
    batch = synthetic_batch(2, size, num_classes_of(model), seed=0)
    trainer = _trainer(model, batch)
    _steps(trainer, 3)  # warm-up: kernels compiled, caches made
    with HostSyncCounter([REPO / "detr_plus", REPO / "projects"]) as counter:
        _steps(trainer, 1, 3)
    cuda_syncs = None
    if device.type == "cuda":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                _steps(trainer, 1, 4)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        cuda_syncs = sum("synchroniz" in str(w.message) for w in caught)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as profile:
        _steps(trainer, 1, 5)
    events = profile.key_averages()
    kernels = sum(e.count for e in events if device.type == "cuda" and e.device_type == torch.autograd.DeviceType.CUDA)
    op_ms = deformable_attention_ms(events, device)
    times = []
    for i in range(3 if args.quick else 10):
        _sync(device)
        start = time.perf_counter()
        _steps(trainer, 1, 6 + i)
        _sync(device)
        times.append(time.perf_counter() - start)
    step_ms = 1e3 * sorted(times)[len(times) // 2]
    ratio = step_ms / max(step_ms - op_ms, 1e-9)
    row = {"model": STEP_CONFIG + (" (shrunk)" if args.quick else ""), "images": f"2 x {size[0]}x{size[1]}",
           "host syncs (counted)": counter.total, "syncs (CUDA debug mode)": cuda_syncs, "kernel launches": kernels or None,
           "step ms (median)": step_ms, "deformable attention ms": op_ms,
           "step / step without the op": f"{ratio:.2f}" + (" (goal met)" if ratio <= GOAL_STEP_RATIO else " (goal: <= 1.2)")}
    sites = "\n".join(f"- {count} x `{site}`" for site, count in counter.sites.most_common())
    columns = list(row)
    return markdown_table([row], columns) + "\n\nWhere the host syncs are:\n\n" + (sites or "- none")


def tiny_configs():
    return sorted(p.relative_to(REPO).as_posix() for p in [*REPO.glob("configs/shapes/*_tiny.py"), *REPO.glob("projects/*/configs/*_shapes_tiny.py")])


def check_tiny_amp(args, device):
    from detr_plus_benchmarks.bench_model import num_classes_of, synthetic_batch

    rows = []
    for config in args.configs or tiny_configs():
        try:
            model = _build(config, device, quick=False)
            batch = synthetic_batch(2, (256, 320), num_classes_of(model), seed=0)
            trainer = _trainer(model, batch)
            start = time.perf_counter()
            losses = _steps(trainer, args.iters)
            _sync(device)
            seconds = time.perf_counter() - start
            rows.append({"config": config, "iterations": args.iters, "amp": str(trainer.amp_dtype).replace("torch.", ""),
                         "first loss": losses[0], "last loss": losses[-1], "it/s": args.iters / seconds,
                         "ok": all(map(lambda v: v == v and abs(v) != float("inf"), losses))})
        except Exception as error:  # noqa: BLE001 - one config's failure is a row of the report
            rows.append({"config": config, "ok": False, "error": f"{type(error).__name__}: {error}"[:200]})
    return markdown_table(rows, ["config", "iterations", "amp", "first loss", "last loss", "it/s", "ok", "error"])


def check_ddp(args, device):
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from detr_plus_benchmarks.bench_model import synthetic_batch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        model = _build("configs/shapes/deformable_detr_tiny.py", device, quick=False)
        ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        losses = _steps(_trainer(ddp, synthetic_batch(2, (256, 320), 3, seed=0)), 3)
        row = {"backend": backend, "world size": dist.get_world_size(), "steps": 3, "losses": ", ".join(f"{v:.3f}" for v in losses), "ok": True}
    finally:
        dist.destroy_process_group()
    return markdown_table([row], list(row))


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("DETR_PLUS_DATASETS", str(REPO / "datasets"))
    import detr_plus  # noqa: F401  (detectron2 compatibility patches)

    header = f"# GPU check\n\n{environment(device)}; `{' '.join(['tools/gpu_check.py'] + (argv if argv is not None else sys.argv[1:]))}`"
    sections, started = [], time.perf_counter()
    for name in args.checks:
        check_start = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            body = globals()[f"check_{name}"](args, device)
        except Exception:  # noqa: BLE001 - the report says what failed; the other checks still run
            body = "FAILED:\n\n```\n" + traceback.format_exc()[-2000:] + "```"
        sections.append((f"{name} ({time.perf_counter() - check_start:.0f} s)", body))
        write_report(args.out, header, sections)  # after every check: a later hang loses nothing
    text = write_report(args.out, header + f"\n\nTotal {time.perf_counter() - started:.0f} s.", sections)
    print(text)
    print(f"[gpu_check] report written to {args.out}")
    return 1 if re.search(r"FAILED|\| False \|| FAIL ", text) else 0


if __name__ == "__main__":
    sys.exit(main())
