"""Host syncs in one training step, counted on CPU (``HostSyncCounter``): what would make the host
wait for the GPU. What remains is what a data-dependent size needs: the Hungarian matcher's one
host copy per call (scipy solves on the host), the one-to-many matcher's one per call, OD-DETR's
one per auxiliary-group stage, and QR-DETR's routed-query counts (the router decides the shapes)."""
import pytest
import torch
from test_first_step_losses import build
from test_mixed_precision import TINY_CONFIGS

from detr_plus.engine.host_syncs import HostSyncCounter
from model_utils import REPO, synthetic_batch

ROOTS = [REPO / "detr_plus", REPO / "projects"]
# (file, function, call) of every sync a step may make, with why it is needed.
ALLOWED = {
    ("detr_plus/modeling/matcher.py", "__call__", "cpu"): "a matcher's one host copy per call",
    ("projects/od_detr/modeling/auxiliary_groups.py", "select", "cpu"): "OD-DETR: one per auxiliary-group stage",
    ("detr_plus/modeling/gather.py", "of", "tolist"): "QR-DETR: the routed queries' count",
}


def site_key(site):
    location, function, call = site.split(" ")
    return location.rsplit(":", 1)[0], function, call.strip("()")


def test_counter_finds_the_syncing_calls_and_only_them():
    x = torch.tensor([1.0, -2.0, 3.0])
    with HostSyncCounter(ROOTS) as counter:
        x.item() if x.numel() == 1 else x[0].item()
        bool(x.sum() > 0)
        x[x > 0]
        x.nonzero()
        torch.repeat_interleave(x, torch.tensor([1, 2, 0]))
        x.tolist()
        # not syncs: shapes, masks as values, slices, scatter
        x.masked_fill(x > 0, 0.0), x[1:], x.shape[0], torch.where(x > 0, x, 0.0), x.new_zeros(3).index_add_(0, torch.tensor([0]), x[:1])
        torch.repeat_interleave(x, 2)
    assert counter.total == 6, counter.report()
    assert all(site.startswith("<outside>") for site in counter.sites)  # this file is under neither root


@pytest.mark.parametrize("config_path", TINY_CONFIGS)
def test_a_training_step_syncs_only_where_a_size_depends_on_the_data(config_path):
    model = build(config_path).train()
    batch = synthetic_batch()
    model(batch)  # first step: shape-keyed caches
    with HostSyncCounter(ROOTS) as counter:
        sum(model(batch).values()).backward()
    unexpected = {site for site in counter.sites if site_key(site) not in ALLOWED}
    assert not unexpected, f"{config_path}: {counter.report()}"
    if config_path == "configs/shapes/deformable_detr_tiny.py":  # 2 decoder layers + the encoder: 3 Hungarian matchings
        assert counter.total == 3, counter.report()


def test_a_trainer_step_adds_one_sync_for_its_check_norm_and_logging(tmp_path):
    """DetrTrainer.run_step: the finite check, the grad norm and every loss in one host copy."""
    import itertools

    from detectron2.utils.events import EventStorage

    from detr_plus.engine.trainer import DetrTrainer

    model = build("configs/shapes/deformable_detr_tiny.py").train()
    trainer = DetrTrainer(model, itertools.repeat(synthetic_batch()), torch.optim.AdamW(model.parameters(), lr=1e-4))
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.run_step()
        with HostSyncCounter(ROOTS) as counter:
            trainer.iter = storage.iter = 1
            trainer.run_step()
        assert storage.history("total_loss").latest() == pytest.approx(sum(storage.history(k).latest() for k in storage.histories()
                                                                          if k.startswith("loss_")), rel=1e-5)
        assert storage.history("grad_norm").latest() > 0
    assert {site_key(s) for s in counter.sites} == {("detr_plus/modeling/matcher.py", "__call__", "cpu"),
                                                    ("detr_plus/engine/trainer.py", "run_step", "tolist")}, counter.report()
    assert counter.total == 3 + 1, counter.report()
