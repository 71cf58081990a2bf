"""H-DETR's hybrid branch (``detr_plus.modeling.hybrid``, "DETRs with Hybrid Matching" Sec. 3.2.1):
the GT set repeated k times and Hungarian-matched, the one-to-many queries as the proposals ranked
after the primary ones, masked from them, and nothing of it at inference."""
import pytest
import torch

import detr_plus  # noqa: F401  (detectron2 compatibility patches first)
from detectron2.config import LazyConfig

from detr_plus.modeling import FocalLoss, HungarianMatcher, JointQueries, RepeatedTargets, SetCriterion, TrainingBatch
from detr_plus.modeling.hybrid import repeat_targets
from model_utils import REPO, assert_inference_without_training_parts, build, encode, synthetic_batch, tiny_model_config


def set_criterion():
    return SetCriterion(matcher=HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
                        loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0}, class_loss=FocalLoss())


def test_each_gt_is_matched_k_times_and_the_loss_is_normalised_by_k_num_boxes():
    torch.manual_seed(0)
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    logits, boxes = torch.randn(2, 10, 3), torch.rand(2, 10, 4)
    inner = set_criterion()
    terms, matched = RepeatedTargets(inner, repeats=3)(logits, boxes, targets, num_boxes=2.0)
    queries, gts = matched[0]
    assert len(queries) == 6 and len(set(queries.tolist())) == 6  # six distinct queries for 3 x 2 GT
    assert sorted(gts.tolist()) == [0, 0, 0, 1, 1, 1]  # each real GT three times (indices of the original set)
    assert len(matched[1][0]) == 0
    expected, pairs = inner(logits, boxes, repeat_targets(targets, 3), num_boxes=6.0)
    assert all(torch.equal(terms[k], expected[k]) for k in expected)
    assert torch.equal(pairs[0][0], queries) and torch.equal(pairs[0][1] % 2, gts)  # the same pairs, GT named mod n
    repeated = repeat_targets(targets, 3)[0]
    assert repeated["labels"].tolist() == [0, 2, 0, 2, 0, 2] and torch.equal(repeated["boxes"][4:], targets[0]["boxes"])


def h_detr(seed=0, one2many=12):
    """The tiny ++ with 20 primary queries and ``h_deformable_detr_r50.py``'s hybrid branch."""
    cfg = tiny_model_config("plusplus", num_queries=20)
    cfg.group_sources = LazyConfig.load(str(REPO / "configs" / "models" / "h_deformable_detr_r50.py")).model.group_sources
    cfg.group_sources.one2many.num_queries = one2many
    cfg.group_sources.one2many.d_model = cfg.transformer.decoder.d_model
    return build(cfg, seed), cfg


def test_one_to_many_queries_are_the_proposals_ranked_after_the_primary_ones_and_masked_from_them():
    model, _ = h_detr()
    model.train()
    batch = synthetic_batch()
    state = encode(model, batch)
    transformer = model.transformer
    whole = transformer.select_queries(state, num_queries=32)
    primary = transformer.select_queries(state)
    torch.testing.assert_close(whole.queries.reference[:, :20], primary.queries.reference)  # the first 20 are the primary ones
    group = model.group_sources["one2many"](TrainingBatch(batch, [], [], state, primary, transformer=transformer))[""]
    assert len(group.queries) == 12 and not group.sees_primary
    torch.testing.assert_close(group.queries.reference, whole.queries.reference[:, 20:])
    torch.testing.assert_close(group.queries.content[0], model.group_sources["one2many"].content.weight)  # its own content rows
    torch.testing.assert_close(group.queries.position, whole.queries.position[:, 20:])  # static positions from the proposals
    mask = JointQueries(primary.queries, {"one2many": group}).mask
    assert mask[:20, 20:].all() and mask[20:, :20].all() and not mask[20:, 20:].any()


def test_h_detr_trains_the_one_to_many_branch_and_evaluates_bit_equal_without_it():
    model, cfg = h_detr()
    model.train()
    torch.manual_seed(0)
    losses = model(synthetic_batch())
    o2m = sorted(k for k in losses if k.startswith("one2many/"))
    assert o2m == sorted(f"one2many/loss_{t}_{i}" for t in ("class", "bbox", "giou") for i in range(2))
    assert all(losses[k] > 0 for k in o2m)
    sum(losses.values()).backward()
    assert model.group_sources["one2many"].content.weight.grad.abs().sum() > 0
    cfg.group_sources = None
    _, detections = assert_inference_without_training_parts(model, cfg)
    assert all(len(d) > 0 for d in detections)


def test_selection_options_are_for_two_stage_models():
    model = build(tiny_model_config("plain"))
    state = encode(model, synthetic_batch())
    with pytest.raises(ValueError, match="two-stage"):
        model.transformer.select_queries(state, num_queries=5)
