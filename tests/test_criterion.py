"""The criterion pieces methods compose (OD-DETR's matching distillation needs each): class targets
from several assignments, per-pair box and class weights, matched pairs' costs, padded queries; and
the Hungarian matcher's one host copy per batch. Values against hand computation."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detr_plus.modeling import FocalLoss, HungarianMatcher, OneToManyMatcher, QualityFocalLoss, SetCriterion


def qfl(s, t, gamma=2.0):
    """Eq. 2 of OD-DETR for one entry: -|t - s|^gamma ((1 - t) log(1 - s) + t log s)."""
    return -abs(t - s) ** gamma * ((1 - t) * math.log(1 - s) + t * math.log(s))


def sig(x):
    return 1 / (1 + math.exp(-x))


# GT 0 = [0, 0.5]^2 (class 0), GT 1 = [0.5, 1]^2 (class 1), GT 2 = [0.5, 1] x [0, 0.5] (class 0).
TARGETS = [{"labels": torch.tensor([0, 1, 0]),
            "boxes": torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5]], dtype=torch.float64)}]
# Query 0 = [0, 0.75]^2: IoU 0.25 / 0.5625 = 4/9 with GT 0, 0.0625 / 0.75 = 1/12 with GT 1, 1/12 with GT 2.
# Query 1 = [0, 0.5] x [0.125, 0.375]: IoU 0.5 with GT 0. Query 2 = [0.375, 0.875] x [0, 0.5]: IoU
# 0.1875 / 0.3125 = 0.6 with GT 2 and 0.0625 / 0.4375 = 1/7 with GT 0.
BOXES = torch.tensor([[[0.375, 0.375, 0.75, 0.75], [0.25, 0.25, 0.5, 0.25], [0.625, 0.25, 0.5, 0.5]]], dtype=torch.float64)
LOGITS = torch.tensor([[[0.5, -1.0], [1.0, 0.0], [-0.5, 0.25]]], dtype=torch.float64)


def pairs(q, g):
    return [(torch.tensor(q), torch.tensor(g))]


def test_class_targets_from_two_assignments_hand_values():
    """OD-DETR Eq. 3 through ``loss_terms``: own assignment (q0 -> GT0, q2 -> GT0) and a teacher's
    (q0 -> GT1, q1 -> GT0, q2 -> GT2). q0 gets two classes (t = 4/9 for class 0, t' = 1/12 for class
    1); q1 only the teacher's (0.5); q2's two labels share class 0, so its own target (IoU with GT0 = 0)
    is kept; every other entry is a negative (t = 0)."""
    criterion = SetCriterion(HungarianMatcher(), {"class": 1.0, "bbox": 0.0, "giou": 0.0}, class_loss=QualityFocalLoss())
    own, teacher = pairs([0, 2], [0, 0]), pairs([0, 1, 2], [1, 0, 2])
    terms = criterion.loss_terms(LOGITS, BOXES, TARGETS, 2.0, [own, teacher], own)
    targets = [[4 / 9, 1 / 12], [0.5, 0.0], [1 / 7, 0.0]]
    expected = sum(qfl(sig(LOGITS[0, q, c].item()), targets[q][c]) for q in range(3) for c in range(2)) / 2.0
    assert terms["loss_class"].item() == pytest.approx(expected, rel=1e-6)  # IoU targets in float32
    # Swapping the priority keeps the teacher's target where both label class 0 of q2: 0.6.
    swapped = criterion.loss_terms(LOGITS, BOXES, TARGETS, 2.0, [teacher, own], own)
    targets[2][0] = 0.6
    expected = sum(qfl(sig(LOGITS[0, q, c].item()), targets[q][c]) for q in range(3) for c in range(2)) / 2.0
    assert swapped["loss_class"].item() == pytest.approx(expected, rel=1e-6)
    # One assignment: exactly the criterion's own forward with those indices.
    single, _ = criterion(LOGITS, BOXES, TARGETS, 2.0, indices=own)
    torch.testing.assert_close(criterion.loss_terms(LOGITS, BOXES, TARGETS, 2.0, [own], own)["loss_class"], single["loss_class"])


def test_per_pair_box_and_class_weights_hand_values():
    """OD-DETR Eq. 4's w_d: the box terms of a pair times its weight; optional class-term weights."""
    criterion = SetCriterion(HungarianMatcher(), {"class": 1.0, "bbox": 1.0, "giou": 1.0}, class_loss=FocalLoss())
    box_pairs = pairs([0, 1], [0, 0])
    terms = criterion.loss_terms(LOGITS, BOXES, TARGETS, 2.0, [box_pairs], box_pairs, box_weights=[torch.tensor([1.0, 0.51])])
    l1 = [sum(abs(a - b) for a, b in zip(BOXES[0, q].tolist(), TARGETS[0]["boxes"][0].tolist())) for q in (0, 1)]
    # GIoU = IoU for boxes whose enclosing box is their union: 1 - 4/9 and 1 - 1/2.
    giou = [1 - 4 / 9, 1 - 0.5]
    assert terms["loss_bbox"].item() == pytest.approx((l1[0] + 0.51 * l1[1]) / 2.0, rel=1e-6)  # 0.51 in float32
    assert terms["loss_giou"].item() == pytest.approx((giou[0] + 0.51 * giou[1]) / 2.0, rel=1e-6)
    # Class weights scale the labelled entry of each pair only.
    plain = criterion.class_loss_of(LOGITS, BOXES, TARGETS, [box_pairs])
    weighted = criterion.class_loss_of(LOGITS, BOXES, TARGETS, [box_pairs], class_weights=[[torch.tensor([1.0, 0.51])]])
    ratio = weighted / plain
    assert ratio[0, 1, 0].item() == pytest.approx(0.51) and torch.allclose(ratio[0, [0, 2]], torch.ones(2, 2, dtype=torch.float64))
    assert ratio[0, 1, 1].item() == pytest.approx(1.0)


def test_pair_costs_are_the_cost_matrix_entries():
    matcher = HungarianMatcher()
    given = pairs([0, 2, 1], [1, 2, 0])
    (costs,) = matcher.pair_costs(LOGITS, BOXES, TARGETS, given)
    full = matcher.cost_matrix(LOGITS[0], BOXES[0], TARGETS[0]["labels"], TARGETS[0]["boxes"])
    torch.testing.assert_close(costs.double(), full[[0, 2, 1], [1, 2, 0]].double(), rtol=1e-6, atol=1e-6)


def test_padded_queries_are_never_matched_or_supervised():
    """A padded query that would be the best match is skipped by both matchers, and its logits do not
    enter the class loss."""
    boxes = torch.cat([TARGETS[0]["boxes"][:1, None].expand(1, 1, 4), BOXES], 1).float()  # query 0 = GT 0 exactly
    logits = torch.cat([torch.full((1, 1, 2), 3.0), LOGITS], 1).float()
    targets = [{k: v.float() if v.is_floating_point() else v for k, v in TARGETS[0].items()}]
    valid = torch.tensor([[False, True, True, True]])
    for matcher in (HungarianMatcher(), OneToManyMatcher(topk=2, threshold=0.0)):
        (q, _), = matcher(logits, boxes, targets, valid=valid)
        assert 0 not in q.tolist() and len(q) > 0
        (q_all, _), = matcher(logits, boxes, targets)
        assert 0 in q_all.tolist()
    criterion = SetCriterion(HungarianMatcher())
    a, _ = criterion(logits, boxes, targets, 3.0, valid=valid)
    b, _ = criterion(logits.index_fill(1, torch.tensor([0]), -7.0), boxes, targets, 3.0, valid=valid)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def naive_hungarian(matcher, logits, boxes, targets, valid=None):
    """Per-image matching, one cost matrix and one host copy per image (the reference)."""
    out = []
    for b, t in enumerate(targets):
        rows = torch.arange(logits.shape[1]) if valid is None else valid[b].nonzero().flatten()
        if len(t["labels"]) == 0 or len(rows) == 0:
            out.append(([], []))
            continue
        cost = matcher.cost_matrix(logits[b, rows], boxes[b, rows], t["labels"], t["boxes"]).numpy()
        r, c = linear_sum_assignment(cost)
        out.append((rows[r].tolist(), c.tolist()))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_hungarian_equals_per_image_matching_with_one_host_copy(seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    batch, nq, sizes = 4, 12, [3, 0, 5, 1]
    logits = torch.randn(batch, nq, 5, generator=gen)
    boxes = torch.cat([torch.rand(batch, nq, 2, generator=gen) * 0.6 + 0.2, torch.rand(batch, nq, 2, generator=gen) * 0.3 + 0.05], -1)
    targets = [{"labels": torch.randint(0, 5, (n,), generator=gen),
                "boxes": torch.cat([torch.rand(n, 2, generator=gen) * 0.6 + 0.2, torch.rand(n, 2, generator=gen) * 0.3 + 0.05], -1)}
               for n in sizes]
    valid = torch.rand(batch, nq, generator=gen) > 0.3
    matcher = HungarianMatcher()
    copies = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(self.shape) or original(self, *a, **k))
    got = matcher(logits, boxes, targets)
    assert len(copies) == 1 and copies[0] == (batch, nq, sum(sizes))  # the whole batch's costs, once
    got_valid = matcher(logits, boxes, targets, valid=valid)
    monkeypatch.undo()
    for result, reference in ((got, naive_hungarian(matcher, logits, boxes, targets)),
                              (got_valid, naive_hungarian(matcher, logits, boxes, targets, valid))):
        for (q, g), (rq, rg) in zip(result, reference):
            assert q.tolist() == rq and g.tolist() == rg
            assert q.dtype == torch.long
    assert all(len(q) == min(n, int(v.sum())) for (q, _), n, v in zip(got_valid, sizes, valid))
    assert np.all([len(q) == n for (q, _), n in zip(got, sizes)])
