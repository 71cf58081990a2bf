"""``model_best.pth`` (``train.best_checkpoint``, issue #31): ``KeepBestCheckpoint`` on a made-up
sequence of evaluation results, across a resume, and in a real train_net run."""
import json
from types import SimpleNamespace

import pytest
from detectron2.utils.events import EventStorage

from detr_plus.engine.hooks import KeepBestCheckpoint

PERIOD, MAX_ITER = 10, 60


class RecordingCheckpointer:
    def __init__(self, save_dir):
        self.save_dir, self.saved = str(save_dir), []

    def save(self, name, **extra):
        self.saved.append((name, extra["iteration"]))


def evaluate(hook, storage, iteration, ap):
    """What EvalHook leaves in the storage after the evaluation at ``iteration``, then the hook's turn."""
    hook.trainer.iter = storage.iter = iteration
    if ap is not None:
        storage.put_scalar("bbox/AP", ap, smoothing_hint=False)
    if iteration + 1 == MAX_ITER:
        hook.after_train()
    else:
        hook.after_step()


def new_hook(checkpointer, storage, start_iter):
    hook = KeepBestCheckpoint(PERIOD, checkpointer, "bbox/AP", "max")
    hook.trainer = SimpleNamespace(iter=start_iter, max_iter=MAX_ITER, storage=storage)
    hook.before_train()
    return hook


def test_keeps_the_weights_of_the_best_evaluation_and_its_record(tmp_path):
    """Evaluations every 10 iterations (after iterations 9, 19, ...): AP 10, 30, 20, 30 (a tie is not
    better), NaN (ignored), 40 at the last one. Saved: at 9, 19 and 59; model_best.json says 40 at 59."""
    checkpointer = RecordingCheckpointer(tmp_path)
    with EventStorage(0) as storage:
        hook = new_hook(checkpointer, storage, 0)
        for iteration, ap in zip(range(PERIOD - 1, MAX_ITER, PERIOD), [10.0, 30.0, 20.0, 30.0, float("nan"), 40.0]):
            evaluate(hook, storage, iteration, ap)
    assert checkpointer.saved == [("model_best", 9), ("model_best", 19), ("model_best", 59)]
    assert json.loads((tmp_path / "model_best.json").read_text()) == {"metric": "bbox/AP", "value": 40.0, "iteration": 59}


def test_a_resumed_run_replaces_the_best_only_with_a_better_evaluation(tmp_path):
    """Before the resume: 10, 30 (best at 19). Resumed at iteration 20: 25 is worse than the 30 read
    from model_best.json (a fresh BestCheckpointer would have saved it), 35 is better."""
    checkpointer = RecordingCheckpointer(tmp_path)
    with EventStorage(0) as storage:
        hook = new_hook(checkpointer, storage, 0)
        evaluate(hook, storage, 9, 10.0)
        evaluate(hook, storage, 19, 30.0)
    checkpointer.saved.clear()
    with EventStorage(20) as storage:
        hook = new_hook(checkpointer, storage, 20)
        assert (hook.best_metric, hook.best_iter) == (30.0, 19)
        evaluate(hook, storage, 29, 25.0)
        assert checkpointer.saved == []
        evaluate(hook, storage, 39, 35.0)
    assert checkpointer.saved == [("model_best", 39)]
    assert json.loads((tmp_path / "model_best.json").read_text())["value"] == 35.0


def test_a_new_run_in_the_same_directory_starts_from_no_best(tmp_path):
    """Not resumed (iteration 0): an old model_best.json does not count; the first evaluation is saved."""
    (tmp_path / "model_best.json").write_text(json.dumps({"metric": "bbox/AP", "value": 99.0, "iteration": 5}))
    checkpointer = RecordingCheckpointer(tmp_path)
    with EventStorage(0) as storage:
        hook = new_hook(checkpointer, storage, 0)
        evaluate(hook, storage, 9, 1.0)
    assert checkpointer.saved == [("model_best", 9)]


@pytest.mark.usefixtures("single_thread")
def test_train_net_writes_model_best(tiny, shapes_mini, tmp_path):
    """6 iterations evaluated every 3: model_best.pth holds the weights of the better of the two
    evaluations, and model_best.json its AP, equal to that evaluation's bbox/AP in metrics.json."""
    import torch

    cfg = tiny.make_cfg(tmp_path, "train.max_iter=6", "train.eval_period=3", "lr_multiplier.warmup_length=0")
    tiny.run_train(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json") if "bbox/AP" in line]
    assert [r["iteration"] for r in rows] == [2, 6]  # the evaluation after the last iteration is stored at max_iter
    record = json.loads((tmp_path / "model_best.json").read_text())
    best = rows[1] if rows[1]["bbox/AP"] > rows[0]["bbox/AP"] else rows[0]  # a tie keeps the first
    assert record == {"metric": "bbox/AP", "value": best["bbox/AP"], "iteration": best["iteration"]}
    saved = torch.load(tmp_path / "model_best.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == best["iteration"] and "model" in saved
