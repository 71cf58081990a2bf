"""DINO's contrastive denoising group source (``detr_plus.modeling.denoising``, DINO Sec. 3.2): noise
statistics, the group-count rule, the layout and attention mask on a batch with unequal GT counts,
the fixed targets and the num_boxes x G normalisation by hand."""
import copy
from types import SimpleNamespace

import pytest
import torch

from detr_plus.layers.box_ops import box_cxcywh_to_xyxy
from detr_plus.modeling import (ContrastiveDenoising, DecoderQueries, FocalLoss, HungarianMatcher, JointQueries, LayerVariant, QueryGroup,
                                SetCriterion, TrainingVariant)
from detr_plus.modeling.denoising import denoising_group_count, noise_boxes, noise_labels
from model_utils import assert_inference_without_training_parts, batch_without_objects, build, synthetic_batch, tiny_model_config

D = 8


def criterion():
    return SetCriterion(matcher=HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
                        loss_weights={"class": 1.0, "bbox": 5.0, "giou": 2.0}, class_loss=FocalLoss())


class StubTransformer:
    """``queries_at`` of a box_sine model: the boxes are the anchors, no static position."""

    @staticmethod
    def queries_at(content, boxes, slots=None):
        return DecoderQueries(content, boxes)


def targets(counts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        centre = 0.3 + 0.4 * torch.rand(n, 2, generator=gen)
        size = 0.1 + 0.2 * torch.rand(n, 2, generator=gen)
        out.append({"labels": torch.randint(0, 5, (n,), generator=gen), "boxes": torch.cat([centre, size], 1)})
    return out


@pytest.mark.parametrize("largest, expected", [(0, 1), (1, 100), (3, 33), (7, 14), (100, 1), (150, 1)])
def test_group_count_is_dn_number_over_the_largest_gt_count(largest, expected):
    assert denoising_group_count(100, largest) == expected


def test_positive_noise_stays_inside_the_scale_and_negative_noise_between_it_and_twice_it():
    torch.manual_seed(0)
    boxes = torch.tensor([0.5, 0.5, 0.2, 0.1]).expand(20000, 4)  # far from the borders: no clamping
    scale = 0.4
    for negative, low, high in ((False, 0.0, 1.0), (True, 1.0, 2.0)):
        noised = noise_boxes(boxes, torch.full((20000,), negative), scale)
        moved = (box_cxcywh_to_xyxy(noised) - box_cxcywh_to_xyxy(boxes)).abs()
        half = torch.tensor([0.1, 0.05, 0.1, 0.05]) * scale  # lambda x (w/2, h/2, w/2, h/2)
        ratio = moved / half
        assert ratio.min() >= low - 1e-5 and ratio.max() <= high + 1e-5
        assert ratio.min() < low + 0.01 and ratio.max() > high - 0.01  # the whole interval is used
        assert abs(ratio.mean().item() - (low + high) / 2) < 0.01  # uniform
    assert torch.equal(noise_boxes(boxes[:3], torch.zeros(3, dtype=torch.bool), 0.0), boxes[:3])


def test_noised_corners_are_clamped_to_the_image():
    torch.manual_seed(0)
    boxes = torch.tensor([0.05, 0.95, 0.1, 0.1]).expand(1000, 4)
    corners = box_cxcywh_to_xyxy(noise_boxes(boxes, torch.ones(1000, dtype=torch.bool), 1.0))
    assert corners.min() >= 0 and corners.max() <= 1 and (corners == 0).any() and (corners == 1).any()


def test_label_noise_flips_a_quarter_of_the_labels_at_ratio_one_half():
    torch.manual_seed(0)
    labels = torch.zeros(200000, dtype=torch.long)
    noised = noise_labels(labels, num_classes=1000, label_noise_ratio=0.5)
    changed = (noised != labels).float().mean().item()
    assert abs(changed - 0.25 * (1 - 1 / 1000)) < 0.005  # a flip to a random class, sometimes the same one
    assert noised.max() < 1000 and noised.min() >= 0


def test_layout_targets_and_attention_mask_on_a_batch_with_unequal_gt_counts():
    torch.manual_seed(0)
    source = ContrastiveDenoising(criterion(), num_classes=5, d_model=D, dn_number=6, label_noise_ratio=0.0, box_noise_scale=0.4,
                                  attend_padding=False)
    batch_targets = targets([3, 1])
    batch = SimpleNamespace(targets=batch_targets, transformer=StubTransformer())
    torch.manual_seed(1)
    group = source(batch)[""]
    # G = 6 // 3 = 2 groups of 2 x 3 queries: [pos 0..2, neg 0..2] twice.
    q = group.queries
    assert q.content.shape == (2, 12, D) and q.reference.shape == (2, 12, 4)
    expected_valid = torch.tensor([[True] * 12, [True, False, False] * 4])
    assert torch.equal(q.valid, expected_valid)
    assert torch.equal(q.content[~q.valid], torch.zeros(8, D))  # padding has no content
    labels = batch_targets[0]["labels"]
    for g in range(2):  # without label noise every content row is its GT's label embedding
        for part in range(2):
            rows = q.content[0, g * 6 + part * 3: g * 6 + part * 3 + 3]
            assert torch.equal(rows, source.label_embedding.weight[labels])
    assert [tuple(t.tolist() for t in pair) for pair in group.indices] == [([0, 1, 2, 6, 7, 8], [0, 1, 2, 0, 1, 2]), ([0, 6], [0, 0])]
    assert group.sees_primary and group.loss_scale == pytest.approx(1 / 2)
    # The joint pass with 4 matching queries: they never see the denoising ones; denoising queries
    # see the matching ones and only their own group.
    primary = DecoderQueries(torch.zeros(2, 4, D), torch.full((2, 4, 4), 0.5))
    mask = JointQueries(primary, {"dn": group}).mask  # True: may not attend
    assert mask.shape == (16, 16)
    assert mask[:4, 4:].all() and not mask[:4, :4].any()
    assert not mask[4:, :4].any()
    group_of = torch.arange(12) // 6
    assert torch.equal(mask[4:, 4:], group_of[:, None] != group_of[None, :])
    # DINO's public code: padding rows are queries at (0.5, 0.5, 0.5, 0.5) with zero content, seen by
    # their group and supervised as background (no valid mask).
    torch.manual_seed(1)
    source.attend_padding = True
    official = source(batch)[""]
    assert official.queries.valid is None
    assert torch.equal(official.queries.content, q.content) and torch.equal(official.queries.reference, q.reference)
    assert torch.equal(official.queries.reference[~expected_valid], torch.full((8, 4), 0.5))
    assert torch.equal(JointQueries(primary, {"dn": official}).mask, mask)


def test_positives_reconstruct_their_gt_and_negatives_go_to_background_normalised_by_num_boxes_times_groups():
    """Losses on a hand-made prediction: the positives predict their GT box exactly except one
    coordinate of one query, so L1 and GIoU are known by hand; class loss is the focal loss of the
    fixed targets (positives: their label, negatives: background)."""
    torch.manual_seed(0)
    source = ContrastiveDenoising(criterion(), num_classes=3, d_model=D, dn_number=2, label_noise_ratio=0.0, box_noise_scale=0.4,
                                  attend_padding=False)
    gt = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    group = source(SimpleNamespace(targets=gt, transformer=StubTransformer()))[""]
    assert len(group.queries) == 4  # G = 2 groups of (1 positive, 1 negative)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]]])
    logits = torch.zeros(1, 4, 3)
    terms, indices = group.criterion(logits, boxes, gt, num_boxes=1.0, indices=group.indices, valid=group.queries.valid)
    scale = group.loss_scale
    assert [i.tolist() for i in indices[0]] == [[0, 2], [0, 0]]
    # L1: 0 for query 0, 0.1 for query 2 (x weight 5); GIoU of two 0.2 x 0.2 boxes shifted by 0.1:
    inter, union = 0.1 * 0.2, 2 * 0.04 - 0.1 * 0.2
    enclosing = 0.3 * 0.2
    giou = inter / union - (enclosing - union) / enclosing
    assert (terms["loss_bbox"] * scale).item() == pytest.approx(5 * 0.1 / 2, abs=1e-6)
    assert (terms["loss_giou"] * scale).item() == pytest.approx(2 * (1 - giou) / 2, rel=1e-5)
    # Focal loss at p = 0.5: positive target -> 0.25 x 0.25 x log 2, background -> 0.75 x 0.25 x log 2 per logit.
    pos, neg = 0.25 * 0.25 * torch.log(torch.tensor(2.0)).item(), 0.75 * 0.25 * torch.log(torch.tensor(2.0)).item()
    by_hand = (2 * (pos + 2 * neg) + 2 * (3 * neg)) / 2  # 2 positives (one class each), 2 negatives; / G
    assert (terms["loss_class"] * scale).item() == pytest.approx(by_hand, rel=1e-5)


def test_a_batch_without_objects_gives_one_empty_group():
    source = ContrastiveDenoising(criterion(), num_classes=3, d_model=D)
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    group = source(SimpleNamespace(targets=empty, transformer=StubTransformer()))[""]
    assert len(group.queries) == 0 and group.loss_scale == 1.0
    assert [len(q) for q, _ in group.indices] == [0, 0]


# --- DINO: the denoising source in the model ------------------------------------------------------
def dino(seed=0, **kwargs):
    return build(tiny_model_config("dino", **kwargs), seed)


def test_dino_trains_its_denoising_queries_and_evaluates_bit_equal_without_them():
    model = dino()
    torch.manual_seed(0)
    losses = model(synthetic_batch())
    dn = sorted(k for k in losses if k.startswith("dn/"))
    assert dn == sorted(f"dn/loss_{t}_{i}" for t in ("class", "bbox", "giou") for i in range(2))  # every layer, no encoder loss
    assert all(losses[k] > 0 for k in dn)
    sum(losses.values()).backward()
    assert model.group_sources["dn"].label_embedding.weight.grad.abs().sum() > 0
    cfg = tiny_model_config("dino")
    cfg.group_sources = None
    _, detections = assert_inference_without_training_parts(model, cfg)
    assert [len(d) for d in detections] == [20 * 3] * 2  # top 300 of 20 queries x 3 classes: all


def test_dino_denoising_on_a_batch_without_objects_keeps_its_loss_keys_and_its_embedding_in_the_graph():
    """DDP without ``find_unused_parameters`` needs every parameter in the graph every step."""
    model = dino()
    keys = set(model(synthetic_batch()))
    losses = model(batch_without_objects())
    assert set(losses) == keys and all(losses[k] == 0 for k in keys if k.startswith("dn/"))
    sum(losses.values()).backward()
    grad = model.group_sources["dn"].label_embedding.weight.grad
    assert grad is not None and grad.abs().sum() == 0


def test_a_variant_with_group_losses_trains_the_denoising_queries_of_its_own_stream():
    """``TrainingVariant(group_losses=["dn"])`` (Mr. DETR's routes on DINO): the variant's stream carries
    the denoising queries and gets their losses under ``{variant}/dn/``. A variant that shares every
    block and starts from the primary queries decodes exactly what the primary pass does, so its
    losses equal the primary and denoising ones, x its loss scale."""
    model = dino()
    model.variants["same"] = TrainingVariant([LayerVariant(), LayerVariant()], copy.deepcopy(model.criterion), loss_scale=0.5,
                                             own_stream=True, group_losses=["dn"])
    torch.manual_seed(0)
    losses = model(synthetic_batch())
    dn_keys = [f"loss_{t}_{i}" for t in ("class", "bbox", "giou") for i in range(2)]
    assert {k for k in losses if k.startswith("same/dn/")} == {f"same/dn/{k}" for k in dn_keys}
    for key in dn_keys:
        assert losses[f"dn/{key}"] > 0
        torch.testing.assert_close(losses[f"same/dn/{key}"], 0.5 * losses[f"dn/{key}"])
    torch.testing.assert_close(losses["same/loss_class_1"], 0.5 * losses["loss_class"])  # the last layer
    model.variants["same"].group_losses = ("one2many",)
    with pytest.raises(ValueError, match=r"model.variants\['same'\].group_losses names 'one2many'.*\['dn'\]"):
        model(synthetic_batch())


def test_joint_queries_mark_the_queries_of_groups():
    primary = DecoderQueries(torch.zeros(2, 3, D), torch.rand(2, 3, 4))
    group = QueryGroup(DecoderQueries(torch.zeros(2, 2, D), torch.rand(2, 2, 4)), criterion())
    assert JointQueries(primary).group_queries is None
    marks = JointQueries(primary, {"a": group, "b": group}).group_queries
    assert marks.tolist() == [[False] * 3 + [True] * 4] * 2
