"""The training-step profiler (benchmarks/profile_train_step.py): exclusive part times, every part of
a real step attributed, and the model left as it was."""
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, TINY_MODEL_OVERRIDES
from detr_plus_benchmarks import profile_train_step as profiler


def test_part_clock_times_are_exclusive(monkeypatch):
    """A part entered inside another pauses it: outer 1 + 3 s, inner 2 s (a fake clock)."""
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    clock = profiler.PartClock(torch.device("cpu"))
    with clock.part("outer"):
        now[0] += 1
        with clock.part("inner"):
            now[0] += 2
        now[0] += 3
    with clock.part("inner"):
        now[0] += 0.5
    assert dict(clock.totals) == {"outer": 4.0, "inner": 2.5}


def test_split_configs():
    assert profiler.split_configs([]) == [(profiler.DEFAULT_CONFIG, [])]
    assert profiler.split_configs(["--config-file", "a.py", "x=1", "--compare", "b.py", "y=2", "z=3"]) == [
        ("a.py", ["x=1"]), ("b.py", ["y=2", "z=3"])]
    with pytest.raises(SystemExit, match="before any --config-file"):
        profiler.split_configs(["x=1"])


def test_profile_attributes_every_part_of_a_step_and_restores_the_model(shapes_mini, single_thread):
    from detr_plus.modeling.matcher import HungarianMatcher

    call_before, backward_before = HungarianMatcher.__call__, torch.Tensor.backward
    overrides = TINY_MODEL_OVERRIDES + ["dataloader.train.dataset=shapes_train_mini"]
    args = SimpleNamespace(device="cpu", steps=2, warmup=1, batch_size=None)
    result = profiler.profile(str(REPO / "configs" / "shapes" / "deformable_detr_tiny.py"), overrides, args)
    parts = result["parts_ms"]
    for part in ("backbone", "encoder", "query selection", "decoder", "matching", "losses", "backward", "optimizer step"):
        assert parts[part] > 0, part
    assert parts["teacher"] == 0  # the baseline has none
    assert sum(parts.values()) == pytest.approx(result["step_ms"], rel=0.2)  # medians per part: close, not equal
    assert HungarianMatcher.__call__ is call_before and torch.Tensor.backward is backward_before


def test_flop_count_traces_the_gather_op_and_counts_it_like_grid_sample(tiny, tmp_path):
    """fvcore traces the model through bilinear_gather's autograd Function and counts its taps as
    many MACs as grid_sample's (4 per point and channel), so both implementations cost the same."""
    from detectron2.config import instantiate

    from detr_plus_benchmarks.bench_model import count_flops

    counts = {}
    for impl in ("bilinear_gather", "grid_sample"):
        cfg = tiny.make_cfg(tmp_path, f"+model.transformer.encoder.attn_implementation={impl}",
                            f"+model.transformer.decoder.attn_implementation={impl}")
        torch.manual_seed(0)
        counts[impl] = count_flops(instantiate(cfg.model).eval(), torch.rand(3, 64, 80) * 255)
    gather, grid = counts["bilinear_gather"]["by_operator"], counts["grid_sample"]["by_operator"]
    assert gather["PythonOp._BilinearSampling"] == grid["grid_sampler"] > 0
    assert counts["bilinear_gather"]["total"] == counts["grid_sample"]["total"]


def test_activation_memory_bench_measures_less_with_checkpointing(single_thread):
    """``bench_activation_memory.py`` on the tiny config at 64 x 80 (each measure in its own process):
    checkpointing keeps fewer bytes for backward, and a step reports its time and peak RSS."""
    from detr_plus_benchmarks import bench_activation_memory as bench

    rows = bench.main(["--config-file", str(REPO / "configs/shapes/deformable_detr_tiny.py"), "--image-size", "64", "80",
                       "--batch-size", "1", "--step"])
    row = rows[0]
    assert 0 < row["checkpointed"]["saved_bytes"] < 0.7 * row["plain"]["saved_bytes"]
    assert row["plain_step"]["step_s"] > 0 and row["plain_step"]["peak_bytes"] >= row["plain_step"]["peak_growth_bytes"]
