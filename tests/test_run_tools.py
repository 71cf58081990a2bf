"""Tools around runs (issue #31): ``tools/average_checkpoints.py`` (weights averaged by hand),
``tools/plot_runs.py`` (run names from the command line, one PNG for several runs) and
``tools/count_matches.py`` (matched queries per object, issue #32)."""
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import average_checkpoints  # noqa: E402
import count_matches  # noqa: E402
import plot_runs  # noqa: E402
from detr_plus.engine.checkpoint import checkpoint_state_dict  # noqa: E402


def write_checkpoint(path, weight, bias, tracked, **extra):
    torch.save({"model": {"layer.weight": torch.tensor(weight), "layer.bias": torch.tensor(bias, dtype=torch.float16),
                          "norm.num_batches_tracked": torch.tensor(tracked)}, "iteration": tracked, **extra}, path)
    return str(path)


def test_average_of_three_checkpoints_by_hand(tmp_path, capsys):
    """weights (1, 2), (2, 4), (6, 0) -> (3, 2); a float16 bias 0.5, 1.0, 1.5 -> 1.0 in float16; the
    integer counter comes from the last file; the result loads as a checkpoint."""
    paths = [write_checkpoint(tmp_path / f"m{i}.pth", w, b, t) for i, (w, b, t) in
             enumerate([([1.0, 2.0], 0.5, 10), ([2.0, 4.0], 1.0, 20), ([6.0, 0.0], 1.5, 30)])]
    out = tmp_path / "averaged.pth"
    average_checkpoints.main([*paths, "--output", str(out)])
    state = checkpoint_state_dict(str(out))
    assert torch.equal(state["layer.weight"], torch.tensor([3.0, 2.0]))
    assert state["layer.bias"].dtype == torch.float16 and state["layer.bias"].item() == 1.0
    assert state["norm.num_batches_tracked"].item() == 30
    assert torch.load(out, weights_only=False)["averaged_from"] == paths
    assert "Averaged 3 checkpoints (3 tensors)" in capsys.readouterr().out


def test_average_refuses_checkpoints_of_different_models_naming_the_file(tmp_path):
    a = write_checkpoint(tmp_path / "a.pth", [1.0, 2.0], 0.5, 1)
    b = write_checkpoint(tmp_path / "b.pth", [1.0, 2.0, 3.0], 0.5, 1)
    with pytest.raises(ValueError, match=r"b\.pth is not a checkpoint of the model of .*a\.pth.*other shapes \['layer\.weight'\]"):
        average_checkpoints.main([a, b, "--output", str(tmp_path / "out.pth")])
    with pytest.raises(SystemExit):  # writing over an input would lose it
        average_checkpoints.main([a, a, "--output", a])
    assert checkpoint_state_dict(a)["layer.weight"].tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints.main([a, "--output", str(tmp_path / "out.pth")])


def fake_run(folder: Path, config: str, opts, aps):
    folder.mkdir()
    (folder / "log.txt").write_text(
        f"[12/07 06:14:20] detectron2 INFO: Command line arguments: Namespace(config_file='{config}', resume=False, "
        f"eval_only=False, num_gpus=1, num_machines=1, machine_rank=0, dist_url='tcp://127.0.0.1:49152', opts={opts!r})\n")
    rows = [{"iteration": i, "total_loss": 10.0 - i / 100} for i in range(0, 300, 20)]
    rows += [{"iteration": it, "bbox/AP": ap} for it, ap in aps]
    (folder / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(folder)


def test_plot_runs_names_each_run_by_its_config_and_overrides(tmp_path, capsys):
    a = fake_run(tmp_path / "a", "configs/shapes/dab_detr_tiny.py", ["train.seed=7", "train.output_dir=out/a",
                                                                      "model.transformer.anchor_init=spread"], [(149, 3.0), (299, 6.5)])
    b = fake_run(tmp_path / "b", "projects/qr_detr/configs/qr_dab_detr_shapes_tiny.py", [], [(299, 7.0)])
    c = tmp_path / "c"  # no log.txt: the folder's name
    c.mkdir()
    (c / "metrics.json").write_text(json.dumps({"iteration": 0, "total_loss": 5.0}) + "\n")
    png = tmp_path / "runs.png"
    plot_runs.main([a, b, str(c), "--output", str(png)])
    out = capsys.readouterr().out
    assert f"{a}: dab_detr_tiny seed=7 anchor_init=spread\n" in out
    assert f"{b}: qr_dab_detr_shapes_tiny\n" in out and f"{c}: c\n" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match=r"missing/metrics\.json: no metrics\.json"):
        plot_runs.main([a, str(tmp_path / "missing"), "--output", str(tmp_path / "x.png")])


def test_count_matches_one_per_object_one_to_one_and_k_for_h_detr_repeated_targets(shapes_mini, tiny, capsys):
    """H-DETR tiny: Hungarian on the primary queries and the encoder matches every object once; the
    one-to-many group (targets repeated k = 6 times, 200 queries) six times, on every decoder layer."""
    pairs, objects = count_matches.main(["--config-file", str(tiny.repo / "configs/shapes/h_detr_tiny.py"), "--batches", "1",
                                         *tiny.model_overrides, "dataloader.train.dataset=shapes_train_mini"])
    assert objects > 2
    assert pairs == {**{("primary", i): objects for i in range(2)}, ("enc", 0): objects,
                     **{("one2many", i): 6 * objects for i in range(2)}}
    out = capsys.readouterr().out
    assert f"{objects} objects in 1 training batches" in out
    assert f"one2many                         1{6 * objects:>8}        6.00" in out
