"""Timing helpers shared by the benchmarks: synchronized wall-clock timing with median and quartiles."""
import statistics
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times_s):
    q = statistics.quantiles(times_s, n=4, method="inclusive") if len(times_s) > 1 else [times_s[0]] * 3
    return dict(median_ms=1e3 * statistics.median(times_s), p25_ms=1e3 * q[0], p75_ms=1e3 * q[2], n=len(times_s))


def interleaved_times(calls, repeats, warmup, device):
    """Median and quartiles (ms) per named call of ``calls``, after ``warmup`` untimed rounds, the
    calls taking turns within every repeat: a machine whose speed drifts (a shared VM) then slows all
    of them alike instead of whichever ran last."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: summarize(t) for name, t in times.items()}


def time_calls(fn, repeats, warmup, device):
    """Median and quartiles (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return interleaved_times({"fn": fn}, repeats, warmup, device)["fn"]
