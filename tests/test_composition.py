"""Methods compose (issue #25): every pair of the four methods in one model either trains, or stops at
build time with an error naming the conflict. Each pair's deltas (``projects/<m>/configs/models``)
go onto the tiny Deformable-DETR++ with ``compose_methods``; the model trains 2 iterations (a batch
with objects, then one without: the loss keys must not change) and inference runs the baseline's
cost (no training-only extension). README "Methods together" has the resulting matrix."""
import itertools

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detr_plus.engine.compose import compose_methods, merge_named
from model_utils import REPO, batch_without_objects, synthetic_batch, tiny_model_config, with_copied_teacher

DELTAS = {  # method -> (its model config file, the delta's name in it)
    "mr_detr": ("projects/mr_detr/configs/models/mr_detr.py", "mr_detr"),
    "lora_detr": ("projects/lora_detr/configs/models/lora_detr.py", "lora_detr"),
    "od_detr": ("projects/od_detr/configs/models/od_detr.py", "od_detr"),
    "qr_detr": ("projects/qr_detr/configs/models/qr_detr.py", "qr_detr"),
}
# What each method adds, as loss-key prefixes of a training step.
PREFIXES = {"mr_detr": ("route1/", "route3/"), "lora_detr": ("aux0/", "aux2/"), "od_detr": ("pd/", "ag_0/"), "qr_detr": ("exit/",)}
CONFLICTS = {("lora_detr", "od_detr"): "lora_detr and od_detr conflict: both set model.criterion"}
PAIRS = list(itertools.combinations(DELTAS, 2))


def delta(method):
    path, name = DELTAS[method]
    return LazyConfig.load(str(REPO / path))[name]


def composed(*methods):
    model = tiny_model_config("plusplus", dec_layers=2, num_queries=20)
    return compose_methods(model, **{m: delta(m) for m in methods})


@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_every_pair_of_methods_trains_or_names_its_conflict(pair):
    if pair in CONFLICTS:
        with pytest.raises(ValueError, match=CONFLICTS[pair]):
            composed(*pair)
        return
    torch.manual_seed(0)
    model = with_copied_teacher(instantiate(composed(*pair)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    keys = []
    for batch in (synthetic_batch(), batch_without_objects()):
        losses = model(batch)
        assert all(torch.isfinite(v) for v in losses.values()), pair
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        keys.append(set(losses))
    assert keys[0] == keys[1]
    for method in pair:
        for prefix in PREFIXES[method]:
            assert any(k.startswith(prefix) for k in keys[0]), f"{pair}: no {prefix} losses"
    model.eval()
    with torch.no_grad():
        results = model(synthetic_batch(with_instances=False))
    kept = min(model.select_box_nums_for_evaluation, 20 * 3)  # top-k over 20 queries x 3 classes
    assert len(results) == 2 and all(len(r["instances"]) == kept for r in results)


def test_merge_named_refuses_one_name_from_two_methods():
    assert merge_named(a={"x": 1}, b={"y": 2}) == {"x": 1, "y": 2}
    with pytest.raises(ValueError, match="a and b both add 'x'"):
        merge_named(a={"x": 1}, b={"x": 2})


def test_a_composed_single_method_builds_the_same_model_as_its_config():
    """Composition changes nothing for one method: same parameter names and values (same seed)."""
    alone = tiny_model_config("plusplus", dec_layers=2, num_queries=20)
    alone.update(delta("mr_detr"))
    torch.manual_seed(0)
    expected = instantiate(alone).state_dict()
    torch.manual_seed(0)
    got = instantiate(composed("mr_detr")).state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_two_methods_touching_the_same_node_from_above_and_below_conflict():
    """One method sets a whole call, another a key inside it: whichever comes first, a conflict."""
    from detectron2.config import LazyCall as L

    from detr_plus.modeling import FocalLoss, HungarianMatcher, QualityFocalLoss, SetCriterion

    whole = dict(criterion=L(SetCriterion)(matcher=L(HungarianMatcher)(), class_loss=L(FocalLoss)()))
    inside = dict(criterion=dict(class_loss=L(QualityFocalLoss)()))
    for first, second in ((("a", whole), ("b", inside)), (("b", inside), ("a", whole))):
        model = tiny_model_config("plusplus", dec_layers=2, num_queries=20)
        with pytest.raises(ValueError, match="conflict"):
            compose_methods(model, **dict([first, second]))
    model = tiny_model_config("plusplus", dec_layers=2, num_queries=20)
    compose_methods(model, a=dict(criterion=dict(loss_weights={"class": 1.0})), b=dict(criterion=dict(class_loss=L(FocalLoss)())))
    assert model.criterion.loss_weights["class"] == 1.0 and model.criterion.class_loss._target_ is FocalLoss  # side by side
    assert compose_methods(dict(hooks=[1]), path="train", a=dict(hooks=[2]), b=dict(hooks=[3]))["hooks"] == [1, 2, 3]
