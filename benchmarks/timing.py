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


def time_calls(fn, repeats, warmup, device):
    """Median and quartiles (ms) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return summarize(times)
