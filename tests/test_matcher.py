"""Hungarian matcher vs brute force; one-to-many matcher on hand-made score matrices."""
import itertools
import math

import pytest
import torch
from torchvision.ops import box_convert, generalized_box_iou

from detr_plus.modeling.matcher import HungarianMatcher, OneToManyMatcher, matching_quality

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_boxes(gen, n):
    cxcy = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([cxcy, wh], dim=1)


def reference_cost(logits, boxes, labels, gt_boxes, wc=2.0, wb=5.0, wg=2.0, alpha=0.25, gamma=2.0):
    """Deformable-DETR focal/L1/GIoU cost written out entry by entry."""
    q, n = len(boxes), len(labels)
    xyxy = box_convert(boxes, "cxcywh", "xyxy")
    gxyxy = box_convert(gt_boxes, "cxcywh", "xyxy")
    giou = generalized_box_iou(xyxy, gxyxy)
    cost = torch.zeros(q, n, dtype=torch.float64)
    for i in range(q):
        for j in range(n):
            p = 1 / (1 + math.exp(-logits[i, labels[j]].item()))
            pos = alpha * (1 - p) ** gamma * -math.log(p)
            neg = (1 - alpha) * p ** gamma * -math.log(1 - p)
            l1 = (boxes[i] - gt_boxes[j]).abs().sum().item()
            cost[i, j] = wc * (pos - neg) + wb * l1 - wg * giou[i, j].item()
    return cost


def brute_force_min(cost):
    q, n = cost.shape
    if q >= n:
        return min(sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))
    return min(sum(cost[i, p[i]].item() for i in range(q)) for p in itertools.permutations(range(n), q))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nq,ngt", [(5, 3), (4, 4), (2, 3)])
def test_hungarian_matches_brute_force(seed, nq, ngt):
    gen = torch.Generator().manual_seed(seed)
    num_classes = 4
    logits = torch.randn(1, nq, num_classes, generator=gen) * 2
    boxes = random_boxes(gen, nq)[None]
    labels = torch.randint(0, num_classes, (ngt,), generator=gen)
    gt_boxes = random_boxes(gen, ngt)
    matcher = HungarianMatcher()
    (qi, gi), = matcher(logits, boxes, [{"labels": labels, "boxes": gt_boxes}])
    cost = reference_cost(logits[0], boxes[0], labels, gt_boxes)
    torch.testing.assert_close(matcher.cost_matrix(logits[0], boxes[0], labels, gt_boxes).double(),
                               cost, atol=1e-4, rtol=1e-5)
    assert len(qi) == len(gi) == min(nq, ngt)
    assert len(set(qi.tolist())) == len(qi) and len(set(gi.tolist())) == len(gi)
    assert qi.tolist() == sorted(qi.tolist())
    ours = cost[qi, gi].sum().item()
    assert ours == pytest.approx(brute_force_min(cost), abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_hungarian_zero_gt_dtype_device(device):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=gen).to(device)
    boxes = random_boxes(gen, 10).view(2, 5, 4).to(device)
    targets = [
        {"labels": torch.tensor([1, 2], device=device), "boxes": random_boxes(gen, 2).to(device)},
        {"labels": torch.zeros(0, dtype=torch.long, device=device), "boxes": torch.zeros(0, 4, device=device)},
    ]
    out = HungarianMatcher()(logits, boxes, targets)
    assert len(out) == 2
    for qi, gi in out:
        assert qi.dtype == gi.dtype == torch.long
        assert qi.device.type == gi.device.type == device
    assert len(out[0][0]) == 2 and len(out[1][0]) == 0 and len(out[1][1]) == 0


def test_hungarian_zero_queries():
    out = HungarianMatcher()(torch.zeros(1, 0, 3), torch.zeros(1, 0, 4),
                             [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])
    assert len(out[0][0]) == 0


def pairs(result):
    return sorted(zip(result[0].tolist(), result[1].tolist()))


def test_one_to_many_threshold_topk_and_top1_below_threshold():
    m = torch.tensor([
        [0.9, 0.1],   # q0: top-1 of gt0
        [0.8, 0.2],   # q1
        [0.7, 0.1],   # q2
        [0.3, 0.1],   # q3: below threshold
        [0.1, 0.35],  # q4: top-1 of gt1, below threshold
        [0.2, 0.3],   # q5: below threshold
        [0.5, 0.0],   # q6
        [0.0, 0.0],   # q7
    ])
    o2m = OneToManyMatcher(topk=2, threshold=0.4, max_positive_ratio=1.0)
    assert pairs(o2m.match_single(m)) == [(0, 0), (1, 0), (4, 1)]  # k=2 incl. top-1
    o2m.topk = 3
    assert pairs(o2m.match_single(m)) == [(0, 0), (1, 0), (2, 0), (4, 1)]
    o2m.topk = 6
    assert pairs(o2m.match_single(m)) == [(0, 0), (1, 0), (2, 0), (4, 1), (6, 0)]
    o2m.keep_top1 = False  # gt1 has no query >= tau
    assert pairs(o2m.match_single(m)) == [(0, 0), (1, 0), (2, 0), (6, 0)]


@pytest.mark.parametrize("selection", ["candidates", "dynamic_k"])
def test_one_to_many_threshold_includes_its_boundary(selection):
    """A query whose best M equals the threshold is a candidate (M >= tau; 0.5 and 0.25 are exact in
    float32): q1 at M = tau is kept, q2 just below is not; with tau = 0.25 q2 is kept too."""
    m = torch.tensor([[0.9], [0.5], [0.25]])
    o2m = OneToManyMatcher(topk=6, threshold=0.5, max_positive_ratio=1.0, selection=selection)
    assert pairs(o2m.match_single(m)) == [(0, 0), (1, 0)]
    o2m.threshold = 0.25
    assert pairs(o2m.match_single(m)) == [(0, 0), (1, 0), (2, 0)]


def test_one_to_many_top1_overrides_and_gt_tie():
    m = torch.tensor([
        [0.6, 0.9],  # top-1 of both GTs -> goes to gt0 (lower index), though its best GT is gt1
        [0.1, 0.8],  # candidate of gt1
        [0.5, 0.2],  # candidate of gt0
        [0.55, 0.1],  # candidate of gt0 (gt0's top-1 is q0 with 0.6)
    ])
    res = OneToManyMatcher(topk=6, threshold=0.4, max_positive_ratio=1.0).match_single(m)
    assert pairs(res) == [(0, 0), (1, 1), (2, 0), (3, 0)]
    # a query that is top-1 of gt1 but whose best GT is gt0 goes to gt1
    m2 = torch.tensor([[0.9, 0.3], [0.95, 0.1], [0.2, 0.1]])
    res2 = OneToManyMatcher(topk=6, threshold=0.4, max_positive_ratio=1.0).match_single(m2)
    assert pairs(res2) == [(0, 1), (1, 0)]


def test_one_to_many_positive_cap():
    m = torch.tensor([
        [0.95, 0.1],  # top-1 gt0
        [0.2, 0.9],   # top-1 gt1
        [0.5, 0.1],
        [0.1, 0.85],
        [0.6, 0.2],
        [0.0, 0.0], [0.0, 0.0], [0.0, 0.0],
    ])
    res = OneToManyMatcher(topk=6, threshold=0.4, max_positive_ratio=0.5).match_single(m)  # cap 4
    assert pairs(res) == [(0, 0), (1, 1), (3, 1), (4, 0)]
    res = OneToManyMatcher(topk=6, threshold=0.4, max_positive_ratio=0.25).match_single(m)  # cap 2
    assert pairs(res) == [(0, 0), (1, 1)]
    # cap is at least the number of top-1 pairs, even if they are below threshold
    m3 = torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.3]] + [[0.0] * 3] * 5)
    res = OneToManyMatcher(topk=6, threshold=0.4, max_positive_ratio=0.25).match_single(m3)
    assert pairs(res) == [(0, 0), (1, 1), (2, 2)]


def reference_one_to_many(m, topk, tau, ratio, selection="candidates", keep_top1=True):
    """The one-to-many rules of ``OneToManyMatcher``'s docstring, written out query by query with
    Python lists (no tensor code shared with the matcher): sorted (query, gt) pairs."""
    m = m.tolist()
    nq, n = len(m), len(m[0])
    best_gt = [max(range(n), key=lambda j: (m[q][j], -j)) for q in range(nq)]  # ties: lower GT index
    owner = {}  # rule 1: each GT's top-1 query (ties: lower query); a query claimed twice: lower GT
    if keep_top1:
        for j in range(n):
            top = max(range(nq), key=lambda q: (m[q][j], -q))
            owner.setdefault(top, j)
    others = []  # (query, gt) of rules 2-3 (or 2'-3')
    if selection == "candidates":
        for j in range(n):
            candidates = [q for q in range(nq) if q not in owner and best_gt[q] == j and m[q][j] >= tau]
            candidates.sort(key=lambda q: (-m[q][j], q))
            quota = topk - (1 if j in owner.values() else 0)
            others += [(q, j) for q in candidates[:max(quota, 0)]]
    else:  # dynamic_k
        taken = {}  # query -> GTs that take it
        for j in range(n):
            c = sum(1 for q in range(nq) if best_gt[q] == j and m[q][j] >= tau)
            column = sorted(range(nq), key=lambda q: (-m[q][j], q))
            for q in column[:min(c, topk)]:
                taken.setdefault(q, []).append(j)
        for q, gts in taken.items():
            if q not in owner:
                others.append((q, max(gts, key=lambda j: (m[q][j], -j))))
    top1 = sorted(owner.items())
    cap = max(int(ratio * nq), len(top1))
    others.sort(key=lambda pair: (-m[pair[0]][pair[1]], pair[0]))  # the cap keeps the highest M first
    return sorted((top1 + others)[:cap])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("selection", ["candidates", "dynamic_k"])
@pytest.mark.parametrize("ratio", [1.0, 0.25])
def test_one_to_many_exact_pairs_against_a_naive_reference(seed, selection, ratio):
    """Random 40 x 5 score matrices (k 3, tau 0.4; ``ratio`` 1 leaves the per-GT rules alone, 0.25 makes
    the cap of 10 bind): the exact pairs equal ``reference_one_to_many``, the rules written out by hand.
    A matcher that kept only the top-1 pairs, or ignored k, tau or the cap, gives other pairs."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.rand(40, 5, generator=gen) * 0.8
    matcher = OneToManyMatcher(topk=3, threshold=0.4, max_positive_ratio=ratio, selection=selection)
    qi, gi = matcher.match_single(m)
    expected = reference_one_to_many(m, 3, 0.4, ratio, selection)
    assert qi.tolist() == sorted(qi.tolist())
    assert list(zip(qi.tolist(), gi.tolist())) == expected
    if ratio == 1.0:  # the example exercises the rules: some GT gets k positives, all above the top-1s
        assert torch.bincount(gi, minlength=5).max() == 3
    else:
        assert len(expected) == 10
    # The same with keep_top1 off (rule 1 gone): still the reference's pairs.
    matcher.keep_top1 = False
    qi, gi = matcher.match_single(m)
    assert list(zip(qi.tolist(), gi.tolist())) == reference_one_to_many(m, 3, 0.4, ratio, selection, keep_top1=False)


def test_matching_quality_hand_values():
    logits = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.5, 0.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]])
    gt_labels = torch.tensor([2, 0])
    gt_boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]])
    m = matching_quality(logits, boxes, gt_labels, gt_boxes, class_weight=0.3)
    iou_01 = 0.01 / 0.07
    expected = torch.tensor([
        [0.3 / (1 + math.exp(-2.0)) + 0.7, 0.3 * 0.5 + 0.7 * iou_01],
        [0.3 * 0.5 + 0.7 * iou_01, 0.3 / (1 + math.exp(1.0)) + 0.7],
    ])
    torch.testing.assert_close(m, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_one_to_many_call_zero_gt_and_device(device):
    logits = torch.full((2, 8, 3), -4.0, device=device)
    logits[0, 1, 2] = 4.0
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]], device=device).repeat(2, 8, 1)
    boxes[0, 0] = torch.tensor([0.1, 0.1, 0.05, 0.05])
    targets = [
        {"labels": torch.tensor([2], device=device), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]], device=device)},
        {"labels": torch.zeros(0, dtype=torch.long, device=device), "boxes": torch.zeros(0, 4, device=device)},
    ]
    out = OneToManyMatcher(topk=6, threshold=0.4, max_positive_ratio=0.25)(logits, boxes, targets)
    (q0, g0), (q1, g1) = out
    # queries 1..7 overlap the GT perfectly (M >= 0.7); cap floor(0.25 * 8) = 2: q1 (top-1) + q2
    assert q0.tolist() == [1, 2] and g0.tolist() == [0, 0]
    assert len(q1) == len(g1) == 0
    for x in (q0, g0, q1, g1):
        assert x.dtype == torch.long and x.device.type == device


# Rows: queries, columns: GTs. Best GT per query: q0 -> 0 (0.9), q1 -> 0 (0.5), q2 -> 1 (0.6),
# q3 -> 1 (0.75), q4 / q5 below the threshold 0.4. Candidate counts c = (2, 2); top-1s: G0 q0, G1 q3.
HAND_QUALITY = torch.tensor([[0.9, 0.1], [0.5, 0.2], [0.3, 0.6], [0.7, 0.75], [0.1, 0.38], [0.2, 0.3]])


def test_one_to_many_dynamic_k_rules_on_a_hand_made_matrix():
    """(No ratio cap: ``max_positive_ratio=1``.) Mr. DETR's public rules: G0 takes its top-2 of column 0 among all queries, {q0, q3}; G1 its
    top-2 of column 1, {q3, q2}; q3 (M 0.75 for G1, G1's top-1) goes to G1, so q1, a candidate of G0,
    is not taken. Our default takes G0's top-2 among its own candidates instead: {q0, q1}."""
    authors = OneToManyMatcher(topk=3, threshold=0.4, selection="dynamic_k", max_positive_ratio=1.0)
    q, g = authors.match_single(HAND_QUALITY)
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (2, 1), (3, 1)]
    q, g = OneToManyMatcher(topk=3, threshold=0.4, max_positive_ratio=1.0).match_single(HAND_QUALITY)
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (1, 0), (2, 1), (3, 1)]
    # k = min(c, topk): with topk 1 each GT keeps its top-1 only.
    q, g = OneToManyMatcher(topk=1, threshold=0.4, selection="dynamic_k", max_positive_ratio=1.0).match_single(HAND_QUALITY)
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (3, 1)]
    # A GT without candidates still gets its top-1 (q5 is below the threshold for both GTs).
    low = torch.tensor([[0.9, 0.1], [0.2, 0.3]])
    q, g = OneToManyMatcher(topk=6, threshold=0.4, selection="dynamic_k", max_positive_ratio=1.0).match_single(low)
    assert list(zip(q.tolist(), g.tolist())) == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="selection"):
        OneToManyMatcher(selection="top3")


def test_one_to_many_fixed_cap_keeps_a_seeded_random_subset():
    """Rule 4': at most ``max_positives`` pairs, a uniformly random subset of the uncapped ones drawn
    from the matcher's seeded generator: the same seed gives the same subsets, and over many calls
    every pair is sometimes dropped (not always the lowest-M ones)."""
    full = set(zip(*(t.tolist() for t in OneToManyMatcher(topk=3, selection="dynamic_k", max_positive_ratio=1.0).match_single(HAND_QUALITY))))
    draws = []
    for seed in (0, 0):
        matcher = OneToManyMatcher(topk=3, selection="dynamic_k", max_positives=2, seed=seed)
        draws.append([tuple(zip(*(t.tolist() for t in matcher.match_single(HAND_QUALITY)))) for _ in range(30)])
    assert draws[0] == draws[1]
    assert all(len(d) == 2 and set(d) <= full and list(d) == sorted(d) for d in draws[0])
    dropped = {pair for d in draws[0] for pair in full - set(d)}
    assert dropped == full


def test_hungarian_with_nan_predictions_then_the_error_names_the_loss_term():
    """Queries 1 and 3 predict NaN logits and boxes (a diverged step). Their costs become 1e8
    (``nan_to_num``), so the assignment is the brute-force optimum over the finite queries 0, 2, 4
    (distinct queries and GTs); with every query NaN it is still a full one. The criterion's class
    loss then sums NaN focal terms while the matched (finite) boxes keep L1 / GIoU finite, and the
    training step stops with a ``NonFiniteLossError`` naming loss_class only, the weights untouched."""
    import itertools

    from torch import nn

    from detr_plus.engine.trainer import DetrTrainer, NonFiniteLossError
    from detr_plus.modeling import SetCriterion

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 5, 3, generator=gen)
    boxes = random_boxes(gen, 5)[None]
    nan = torch.zeros(1, 5, 1)
    nan[0, [1, 3]] = float("nan")
    targets = [{"labels": torch.tensor([2, 0]), "boxes": random_boxes(gen, 2)}]
    (qi, gi), = HungarianMatcher()(logits + nan, boxes + nan, targets)
    finite = [0, 2, 4]
    cost = reference_cost(logits[0, finite], boxes[0, finite], targets[0]["labels"], targets[0]["boxes"])
    best = min(itertools.permutations(range(3), 2), key=lambda qs: cost[qs[0], 0] + cost[qs[1], 1])
    assert sorted(zip(qi.tolist(), gi.tolist())) == sorted((finite[q], j) for j, q in enumerate(best))
    (qa, ga), = HungarianMatcher()(logits * float("nan"), boxes * float("nan"), targets)
    assert len(set(qa.tolist())) == 2 and sorted(ga.tolist()) == [0, 1]

    class Diverged(nn.Module):
        def __init__(self):
            super().__init__()
            self.logits, self.boxes = nn.Parameter(logits.clone()), nn.Parameter(boxes.clone())
            self.criterion = SetCriterion(HungarianMatcher())

        def forward(self, batch):
            return self.criterion(self.logits + nan, self.boxes + nan, targets, num_boxes=2.0)[0]

    model = Diverged()
    trainer = DetrTrainer(model, itertools.repeat([{}]), torch.optim.SGD(model.parameters(), lr=0.1), clip_grad_norm=0.1)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train(0, 1)
    message = str(info.value)
    assert "iteration 0" in message and "loss_class" in message
    assert "loss_bbox" not in message and "loss_giou" not in message
    assert torch.equal(model.logits.detach(), logits) and torch.equal(model.boxes.detach(), boxes)
