"""tools/gpu_check.py's CPU parts: its arguments, the report's tables, the op benchmark's summary
rows (speed-up over grid_sample against the 3x goal) and a quick run of the step, tiny-config and
DDP checks on CPU (on a GPU the same code runs at COCO size: tools/gpu_check.sh)."""
import importlib.util

import pytest
import torch

from model_utils import REPO

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_arguments():
    args = gpu_check.parse_args(["--device", "cpu"])
    assert args.checks == list(gpu_check.CHECKS) and args.iters == 50 and args.out.endswith("benchmarks/gpu_check.md")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--checks", "everything"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.parse_args([])  # --device cuda by default: refused without a GPU


def test_markdown_table():
    table = gpu_check.markdown_table([{"a": 1.23456, "b": "x|y"}, {"a": None}], ["a", "b"])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x\\|y |", "|  |  |"]


def test_op_rows_speedup_against_grid_sample():
    bench = [{"shape": "encoder", "impl": "grid_sample", "fwd": {"median_ms": 10.0}, "fwd_bwd": {"median_ms": 30.0}, "check_ok": True},
             {"shape": "encoder", "impl": "triton", "fwd": {"median_ms": 2.0}, "fwd_bwd": {"median_ms": 7.5}, "check_ok": True},
             {"shape": "decoder", "impl": "grid_sample", "fwd": {"median_ms": 1.0}, "fwd_bwd": {"median_ms": 3.0}, "check_ok": True},
             {"shape": "decoder", "impl": "triton", "fwd": {"median_ms": 1.0}, "fwd_bwd": {"median_ms": 2.0}, "check_ok": False},
             {"shape": "decoder", "impl": "bilinear_gather", "error": "RuntimeError: no kernel"},
             {"shape": "tiny", "impl": "triton", "fwd": {"median_ms": 1.0}, "fwd_bwd": {"median_ms": 1.0}}]
    rows = {(r["shape"], r["impl"]): r for r in gpu_check.op_rows(bench, "bfloat16")}
    assert rows[("encoder", "triton")]["fwd+bwd vs grid_sample"] == "4.00x (goal met)"
    assert rows[("decoder", "triton")]["fwd+bwd vs grid_sample"] == "1.50x (goal: 3x)"
    assert rows[("decoder", "triton")]["check"] == "FAIL" and rows[("decoder", "bilinear_gather")]["check"] == "RuntimeError: no kernel"
    assert ("tiny", "triton") not in rows and all(r["dtype"] == "bfloat16" for r in rows.values())


def test_quick_run_on_cpu_writes_the_report(tmp_path):
    out = tmp_path / "report.md"
    code = gpu_check.main(["--device", "cpu", "--quick", "--checks", "train_step", "tiny_amp", "ddp", "--iters", "2",
                           "--configs", "configs/shapes/deformable_detr_tiny.py", "--out", str(out)])
    text = out.read_text()
    assert code == 0, text
    assert text.startswith("# GPU check\n") and "## train_step" in text and "## tiny_amp" in text and "## ddp" in text
    step_row = next(line for line in text.splitlines() if line.startswith("| configs/deformable_detr/"))
    assert "| 2 x 160x224 | 4 |" in step_row  # 3 Hungarian matchings + the trainer's one copy
    assert "| configs/shapes/deformable_detr_tiny.py | 2 | bfloat16 |" in text and "| gloo | 1 | 3 |" in text
