"""Loss keys never change (issue #25 part 2): detectron2 averages the metrics of all processes by the
first process's keys (``SimpleTrainer.write_metrics``), so a key that one process lacks ends a DDP
run with a KeyError. Two gloo processes, where process 1's batch has no object at all, compute one
training step of every method's tiny config and write their metrics the way the trainer does;
both processes must give the same keys."""
import json

import pytest
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from detr_plus.engine.launch import launch
from model_utils import batch_without_objects, synthetic_batch
from test_first_step_losses import build

TINY_CONFIGS = [
    "configs/shapes/deformable_detr_tiny.py",
    "projects/mr_detr/configs/mr_detr_shapes_tiny.py",
    "projects/lora_detr/configs/lora_detr_shapes_tiny.py",
    "projects/od_detr/configs/od_detr_shapes_tiny.py",
    "projects/qr_detr/configs/qr_detr_shapes_tiny.py",
]


def one_step_each(out_path):
    """Per config: one training step (process 0: a batch with objects; process 1: none), its metrics
    written as the trainer writes them; process 0 records every process's loss keys."""
    torch.set_num_threads(1)
    rank, found = comm.get_rank(), {}
    for config in TINY_CONFIGS:
        model = build(config)
        model.train()
        losses = model(synthetic_batch() if rank == 0 else batch_without_objects())
        with EventStorage(0):
            SimpleTrainer.write_metrics(losses, 0.0)  # raises KeyError when the processes' keys differ
        found[config] = comm.all_gather(sorted(losses))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(found, f)


def test_every_tiny_config_gives_the_same_loss_keys_on_a_process_without_objects(tmp_path):
    out = tmp_path / "keys.json"
    launch(one_step_each, 2, args=(str(out),))
    found = json.loads(out.read_text())
    assert set(found) == set(TINY_CONFIGS)
    for config, (with_objects, without) in found.items():
        assert with_objects == without, f"{config}: {sorted(set(with_objects) ^ set(without))}"
    assert any(k.startswith("ag_0/") for k in found["projects/od_detr/configs/od_detr_shapes_tiny.py"][1])


def test_a_group_source_that_drops_a_group_is_stopped_at_the_next_step():
    """A single process meets the same rule as an error naming the missing key, not a gap in a curve."""
    model = build("projects/od_detr/configs/od_detr_shapes_tiny.py")
    model.train()
    model(synthetic_batch())
    source = model.group_sources["ag"]
    original = source.forward
    source.forward = lambda batch: {k: v for k, v in original(batch).items() if k != "1"}
    with pytest.raises(RuntimeError, match=r"missing: \['ag_1/loss_bbox_0'"):
        model(synthetic_batch())
