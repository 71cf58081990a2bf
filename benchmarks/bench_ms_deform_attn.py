#!/usr/bin/env python
"""Micro-benchmark of multi-scale deformable attention (detr_plus/layers/ms_deform_attn.py).

    python benchmarks/bench_ms_deform_attn.py [--device cpu|cuda] [--repeats N] [--quick] [--dtype float32]

Times each implementation on two shapes, the Deformable-DETR encoder (batch 2, 8 heads x 32, levels
64x64/32x32/16x16/8x8, 5440 queries = all positions, 4 points) and its decoder (the same value maps,
300 queries; ``--decoder-queries``), or on one shape given with ``--queries``: median forward (no_grad) and
median forward+backward (gradients of value, sampling_locations and attention_weights) over
``--repeats`` runs after ``--warmup`` runs, the implementations taking turns within each repeat; peak memory of one forward and one forward+backward;
and the largest difference of outputs and gradients from ``grid_sample`` (the reference).
``naive`` (per-point Python loops) runs only on a tiny shape, where all three are compared.
"""
import argparse
import json
import os
import subprocess
import sys

import torch

import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
from detr_plus_benchmarks.timing import interleaved_times, sync
from detr_plus.layers.ms_deform_attn import IMPLEMENTATIONS
from detr_plus.layers.ms_deform_attn_triton import triton_unavailable_reason

REFERENCE = "grid_sample"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Pass when max|diff| <= ATOL + RTOL * max|reference| (per tensor).
TOLERANCE = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}
# Sampling coordinates this close (in pixels) to a pixel boundary may floor differently in two
# implementations (rounding), which moves the location gradient by a jump: excluded from its check.
BOUNDARY_EPS_PX = 1e-4

FULL_SHAPE = dict(batch=2, heads=8, channels=32, levels=[(64, 64), (32, 32), (16, 16), (8, 8)], points=4, queries=None)
QUICK_SHAPE = dict(batch=2, heads=8, channels=32, levels=[(32, 32), (16, 16), (8, 8), (4, 4)], points=4, queries=None)
TINY_SHAPE = dict(batch=1, heads=2, channels=8, levels=[(6, 6), (3, 3)], points=2, queries=10)


def parse_levels(text):
    return [tuple(int(v) for v in level.lower().split("x")) for level in text.split(",")]



def make_inputs(shape, device, dtype, seed, outside_fraction=0.01):
    """Random value, locations uniform in [0, 1] (``outside_fraction`` of them in [-0.2, 1.2]),
    softmaxed weights, and a fixed upstream gradient. Generated on CPU in float64, then cast, so
    every device/dtype sees the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    B, H, C, P = shape["batch"], shape["heads"], shape["channels"], shape["points"]
    spatial_shapes = torch.tensor(shape["levels"], dtype=torch.long)
    L, S = len(spatial_shapes), int(spatial_shapes.prod(1).sum())
    Q = shape["queries"] or S
    level_start_index = torch.cat([spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]])
    value = torch.randn(B, S, H, C, generator=gen, dtype=torch.float64)
    locations = torch.rand(B, Q, H, L, P, 2, generator=gen, dtype=torch.float64)
    outside = torch.rand(locations.shape, generator=gen, dtype=torch.float64) < outside_fraction
    locations = torch.where(outside, torch.rand(locations.shape, generator=gen, dtype=torch.float64) * 1.4 - 0.2, locations)
    weights = torch.randn(B, Q, H, L * P, generator=gen, dtype=torch.float64).softmax(-1).view(B, Q, H, L, P)
    grad_out = torch.randn(B, Q, H * C, generator=gen, dtype=torch.float64)
    to = dict(device=device, dtype=dtype)
    return dict(
        value=value.to(**to).requires_grad_(),
        spatial_shapes=spatial_shapes.to(device),
        level_start_index=level_start_index.to(device),
        sampling_locations=locations.to(**to).requires_grad_(),
        attention_weights=weights.to(**to).requires_grad_(),
        grad_out=grad_out.to(**to),
    )


def describe(shape):
    S = sum(h * w for h, w in shape["levels"])
    levels = ",".join(f"{h}x{w}" for h, w in shape["levels"])
    return (f"B={shape['batch']} heads={shape['heads']}x{shape['channels']} levels={levels} (S={S}) "
            f"Q={shape['queries'] or S} points={shape['points']}")


GRAD_NAMES = ("value", "sampling_locations", "attention_weights")


def forward(fn, x):
    return fn(x["value"], x["spatial_shapes"], x["level_start_index"], x["sampling_locations"], x["attention_weights"])


def forward_no_grad(fn, x):
    with torch.no_grad():
        return forward(fn, x)


def forward_backward(fn, x):
    out = forward(fn, x)
    grads = torch.autograd.grad(out, [x[n] for n in GRAD_NAMES], x["grad_out"])
    return out, grads



# ---- peak memory ---------------------------------------------------------------------------------
def _proc_status_kb(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cuda_peak_mb(run, device):
    """Peak CUDA memory allocated during ``run`` above what was allocated before it, in MB."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def rss_probe(args, impl, mode):
    """Child process: peak RSS growth over one run, with the inputs already built (a fresh process per
    measurement, so memory kept by the allocator from an earlier run cannot hide this one's)."""
    device = torch.device("cpu")
    shape = shape_from_args(args)
    x = make_inputs(shape, device, DTYPES[args.dtype], args.seed)
    fn = IMPLEMENTATIONS[impl]
    forward_backward(fn, make_inputs(TINY_SHAPE, device, DTYPES[args.dtype], args.seed))  # load kernels, thread pool
    run = (lambda: forward_no_grad(fn, x)) if mode == "fwd" else (lambda: forward_backward(fn, x))
    if not _reset_peak_rss():
        print(json.dumps({"error": "cannot reset the peak RSS (/proc/self/clear_refs)"}))
        return
    base = _proc_status_kb("VmRSS")
    run()
    peak = _proc_status_kb("VmHWM")
    print(json.dumps({"peak_mb": (peak - base) / 1024}))


def cpu_peak_mb(impl, mode, args, queries=None):
    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--_rss-probe", impl, mode]
    if queries is not None:
        cmd += ["--queries", str(queries)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None, f"probe failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
    return result.get("peak_mb"), result.get("error")


# ---- correctness ---------------------------------------------------------------------------------
def boundary_mask(x):
    """Sampling coordinates within BOUNDARY_EPS_PX of an integer pixel position (x * W - 0.5)."""
    size_xy = x["spatial_shapes"].flip(-1).to(torch.float64).view(-1, 1, 2)  # (L, 1, 2) broadcast over P
    pix = x["sampling_locations"].detach().double() * size_xy - 0.5
    return (pix - pix.round()).abs() < BOUNDARY_EPS_PX


def _tensors(result):
    return dict(zip(("out",) + tuple(f"d_{n}" for n in GRAD_NAMES), (result[0],) + tuple(result[1])))


def max_diffs(result, reference, mask=None):
    """Max abs diff per tensor (output and each gradient); ``mask`` zeroes d_sampling_locations entries."""
    diffs = {}
    for (name, a), b in zip(_tensors(result).items(), _tensors(reference).values()):
        diff = (a.detach().double() - b.detach().double()).abs()
        if name == "d_sampling_locations" and mask is not None:
            diff = diff.masked_fill(mask, 0.0)
        diffs[name] = float(diff.max()) if diff.numel() else 0.0
    return diffs


def check(result, reference, ref64, x, dtype):
    """float32/float64: output and gradients equal grid_sample's within ``TOLERANCE`` (the location
    gradient away from pixel boundaries). float16/bfloat16, where grid_sample itself is far from exact:
    error against a float64 grid_sample on the same (rounded) inputs at most 2x grid_sample's own + TOLERANCE.
    Returns (max abs diffs vs grid_sample, errors vs float64 or None, ok, boundary coordinates excluded)."""
    atol, rtol = TOLERANCE[dtype]
    scale = {k: float(v.detach().double().abs().max()) for k, v in _tensors(reference if ref64 is None else ref64).items()}
    if dtype in (torch.float16, torch.bfloat16):
        diffs = max_diffs(result, reference)
        errors, ref_errors = max_diffs(result, ref64), max_diffs(reference, ref64)
        ok = all(errors[k] <= 2 * ref_errors[k] + atol + rtol * scale[k] for k in errors)
        return diffs, errors, ok, 0
    mask = boundary_mask(x)
    diffs = max_diffs(result, reference, mask)
    errors = None if ref64 is None else max_diffs(result, ref64)
    ok = all(diffs[k] <= atol + rtol * scale[k] for k in diffs)
    return diffs, errors, ok, int(mask.sum())


def float64_reference(x):
    """grid_sample in float64 on the same (already rounded) inputs."""
    x64 = {k: (v.detach().double().requires_grad_(v.requires_grad) if v.is_floating_point() else v) for k, v in x.items()}
    return forward_backward(IMPLEMENTATIONS[REFERENCE], x64)


# ---- driver --------------------------------------------------------------------------------------
def shape_from_args(args):
    shape = dict(QUICK_SHAPE if args.quick else FULL_SHAPE)
    for key in ("batch", "heads", "channels", "points", "queries"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    if args.levels:
        shape["levels"] = parse_levels(args.levels)
    return shape


def bench_shape(shape, impls, args, device, dtype, repeats, warmup, label):
    x = make_inputs(shape, device, dtype, args.seed)
    rows, outputs, calls = [], {}, {}
    for impl in impls:
        fn = IMPLEMENTATIONS[impl]
        row = dict(shape=label, impl=impl)
        try:
            outputs[impl] = forward_backward(fn, x)
        except Exception as e:  # e.g. a dtype an implementation has no kernel for on this device
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:160]
            rows.append(row)
            continue
        calls[(impl, "fwd")] = lambda fn=fn: forward_no_grad(fn, x)
        calls[(impl, "fwd_bwd")] = lambda fn=fn: forward_backward(fn, x)
        rows.append(row)
    for (impl, key), result in interleaved_times(calls, repeats, warmup, device).items():
        next(r for r in rows if r["impl"] == impl)[key] = result
    for row in rows:
        fn = IMPLEMENTATIONS[row["impl"]]
        if "error" in row or args.no_memory:
            continue
        if device.type == "cuda":
            row["peak_fwd_mb"] = cuda_peak_mb(lambda: forward_no_grad(fn, x), device)
            row["peak_fwd_bwd_mb"] = cuda_peak_mb(lambda: forward_backward(fn, x), device)
        elif label != "tiny":
            row["peak_fwd_mb"], err = cpu_peak_mb(row["impl"], "fwd", args, shape["queries"])
            row["peak_fwd_bwd_mb"], err2 = cpu_peak_mb(row["impl"], "fwd_bwd", args, shape["queries"])
            if err or err2:
                row["memory_note"] = err or err2
    if REFERENCE in outputs:
        ref64 = None if dtype == torch.float64 else float64_reference(x)
        for row in rows:
            if row["impl"] in outputs:
                row["max_abs_diff"], row["error_vs_float64"], row["check_ok"], row["boundary_excluded"] = check(
                    outputs[row["impl"]], outputs[REFERENCE], ref64, x, dtype)
    return rows


def fmt_time(t):
    return f"{t['median_ms']:.2f} ({t['p25_ms']:.2f}-{t['p75_ms']:.2f})"


def fmt_mb(v):
    return "n/a" if v is None else f"{v:.1f}"


def print_table(rows, mem_kind):
    print(f"| shape | implementation | forward ms, median (IQR) | fwd+bwd ms, median (IQR) | peak fwd MB | peak fwd+bwd MB "
          f"| max abs diff vs {REFERENCE}: out / d_value / d_loc / d_weight | check |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['impl']} | error: {r['error']} | | | | | |")
            continue
        d = r.get("max_abs_diff")
        diffs = " / ".join(f"{d[k]:.1e}" for k in d) if d else "n/a"
        check = "reference" if r["impl"] == REFERENCE else ("n/a" if d is None else ("OK" if r["check_ok"] else "FAIL"))
        print(f"| {r['shape']} | {r['impl']} | {fmt_time(r['fwd'])} | {fmt_time(r['fwd_bwd'])} "
              f"| {fmt_mb(r.get('peak_fwd_mb'))} | {fmt_mb(r.get('peak_fwd_bwd_mb'))} | {diffs} | {check} |")
    print(f"\nPeak memory: {mem_kind}.")


def speed_ratios(rows, shapes):
    """grid_sample / bilinear_gather time per shape and direction (> 1: ours faster), printed as a table."""
    ratios = {}
    by_key = {(r["shape"], r["impl"]): r for r in rows if "error" not in r}
    for label, shape in shapes.items():
        ours, ref = by_key.get((label, "bilinear_gather")), by_key.get((label, REFERENCE))
        if ours and ref:
            ratios[label] = {k: ref[k]["median_ms"] / ours[k]["median_ms"] for k in ("fwd", "fwd_bwd")}
    if ratios:
        print(f"\nspeed ratio {REFERENCE} / bilinear_gather (> 1: bilinear_gather faster), medians:\n")
        print("| shape | forward | forward + backward |\n|---|---|---|")
        for label, r in ratios.items():
            print(f"| {label} ({describe(shapes[label])}) | {r['fwd']:.2f}x | {r['fwd_bwd']:.2f}x |")
        print()
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 20, --quick 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 3, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="smaller shape (levels 32..4) and fewer repeats")
    parser.add_argument("--impl", nargs="+", default=None, choices=list(IMPLEMENTATIONS),
                        help="implementations to run (naive only ever runs on the tiny shape)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--channels", type=int, help="channels per head")
    parser.add_argument("--levels", help="comma-separated HxW, e.g. 64x64,32x32,16x16,8x8")
    parser.add_argument("--points", type=int)
    parser.add_argument("--queries", type=int, help="one shape with this many queries (default: the encoder and decoder shapes)")
    parser.add_argument("--decoder-queries", type=int, default=300, help="queries of the decoder shape (default 300)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--_rss-probe", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args._rss_probe:
        return rss_probe(args, *args._rss_probe)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = DTYPES[args.dtype]
    if args.impl is None:  # every implementation that runs compiled on the device (Triton: on CUDA)
        args.impl = [i for i in IMPLEMENTATIONS if i != "triton" or (device.type == "cuda" and triton_unavailable_reason(device) is None)]
    repeats = args.repeats or (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    shape = shape_from_args(args)
    if args.queries is None:  # the encoder (every position queries) and the decoder (fixed queries)
        shapes = {"encoder": shape, "decoder": dict(shape, queries=args.decoder_queries)}
    else:
        shapes = {"main": shape}

    env = f"torch {torch.__version__}, device {device}"
    if device.type == "cuda":
        env += f" ({torch.cuda.get_device_name(device)})"
    env += f", {torch.get_num_threads()} CPU threads (torch.get_num_threads), {os.cpu_count()} CPUs, dtype {args.dtype}"
    if hasattr(os, "getloadavg"):
        env += f", load average {os.getloadavg()[0]:.1f}"
    print(env)
    if device.type == "cpu" and hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1) * 0.75:
        print("WARNING: the CPUs are busy with other work; timings are unreliable (--threads 1 suffers least)")
    for label, s in shapes.items():
        print(f"{label} shape: {describe(s)}; {repeats} timed runs after {warmup} warm-up")
    print(f"tiny shape (all implementations incl. naive): {describe(TINY_SHAPE)}")
    print("forward = no_grad; fwd+bwd = forward + autograd.grad of value, sampling_locations, attention_weights\n")

    main_impls = [i for i in args.impl if i != "naive"]
    rows = []
    for label, s in shapes.items():
        rows += bench_shape(s, main_impls, args, device, dtype, repeats, warmup, label)
    tiny_impls = list(dict.fromkeys(args.impl + [REFERENCE]))
    rows += bench_shape(TINY_SHAPE, tiny_impls, args, device, dtype, min(repeats, 3), 1, "tiny")

    if device.type == "cuda":
        mem_kind = "torch.cuda.max_memory_allocated during one run, above the memory allocated before it (inputs)"
    elif args.no_memory:
        mem_kind = "not measured (--no-memory)"
    else:
        mem_kind = ("CPU peak RSS growth (VmHWM - VmRSS) during one run, in a fresh process per measurement, "
                    "encoder/decoder shapes only; approximate (includes allocator and thread overheads)")
    print_table(rows, mem_kind)

    ratios = speed_ratios(rows, shapes)
    failed = [f"{r['shape']}/{r['impl']}" for r in rows if r.get("check_ok") is False]
    excluded = max((r.get("boundary_excluded", 0) for r in rows if r["shape"] != "tiny"), default=0)
    if excluded:
        print(f"d_loc diff and check leave out {excluded} coordinates within {BOUNDARY_EPS_PX} px of a pixel boundary "
              "(where two implementations may floor differently)")
    for r in rows:
        if r.get("error_vs_float64"):
            print(f"{r['shape']} {r['impl']}: max abs error vs float64 grid_sample, out / d_value / d_loc / d_weight: "
                  + " / ".join(f"{v:.1e}" for v in r["error_vs_float64"].values()))
    if dtype in (torch.float16, torch.bfloat16):
        print(f"{args.dtype}: check = error vs float64 at most 2x grid_sample's own (+ tolerance)")
    print("correctness: " + (f"FAIL {failed}" if failed else "OK, every implementation passes the check against grid_sample"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(env=env, shapes=shapes, tiny_shape=TINY_SHAPE, repeats=repeats, warmup=warmup,
                           rows=rows, ratios=ratios, memory=mem_kind), f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main() or 0)
