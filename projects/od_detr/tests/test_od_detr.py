"""OD-DETR on the shared core (issue #9, "What must be shown"): matching distillation (Eq. 3-4) and
prediction distillation (Eq. 5-6) against hand-computed numbers, the auxiliary groups' selection,
the stability metrics on hand-made matchings, inference equal to the baseline, and a short
train_net run with the EMA teacher, Stop Update and the stability hook."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detectron2.config import LazyConfig, instantiate

from detr_plus.engine.config import apply_overrides
from detr_plus.engine.ema import ModelEMA
from detr_plus.engine.hooks import resolve_stop_update_iter
from detr_plus.modeling import (DecoderOutput, DecoderQueries, FocalLoss, HungarianMatcher, LayerPredictions, LossContext, QualityFocalLoss, QueryGroup,
                                 SetCriterion, strip_training_parts)
from detr_plus_projects.od_detr.modeling import (
    MatchingDistillation,
    PredictionDistillationLoss,
    TeacherQueriesGroup,
    TeacherStageGroups,
    assignment_vectors,
    consistency,
    instability,
)
from model_utils import SMALL_IMAGE_SIZES, synthetic_batch, tiny_model_config  # tests/model_utils.py (pytest.ini: pythonpath = tests)

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "od_detr" / "configs"
TINY = CONFIGS / "od_detr_shapes_tiny.py"
BASELINE = CONFIGS / "od_detr_shapes_tiny_baseline.py"
SMALL = ["model.transformer.encoder.num_layers=1", "model.transformer.decoder.num_layers=2", "model.transformer.num_queries=20"]


def sig(x):
    return 1 / (1 + math.exp(-x))


def qfl(s, t):
    return -abs(t - s) ** 2 * ((1 - t) * math.log(1 - s) + t * math.log(s))


def focal_cost(x, alpha=0.25, gamma=2.0):
    p = sig(x)
    return alpha * (1 - p) ** gamma * -math.log(p) - (1 - alpha) * p ** gamma * -math.log(1 - p)


def pairs(q, g):
    return [(torch.tensor(q), torch.tensor(g))]


# GT 0 = [0, 0.5]^2 (class 0), GT 1 = [0.5, 1]^2 (class 1).
TARGETS = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]], dtype=torch.float64)}]
# q0 = [0, 0.75]^2: IoU 4/9 with GT 0 (GIoU 4/9, L1 0.75), 1/12 with GT 1.
# q1 = [0.5, 1] x [0.625, 0.875]: IoU 0.5 with GT 1.  q2 = [0.25, 0.75] x [0, 0.5]: IoU 1/3 with GT 0 (GIoU 1/3, L1 0.25).
BOXES = torch.tensor([[[0.375, 0.375, 0.75, 0.75], [0.75, 0.75, 0.5, 0.25], [0.5, 0.25, 0.5, 0.5]]], dtype=torch.float64)
LOGITS = torch.tensor([[[0.0, -1.0], [-2.0, 0.5], [0.0, -3.0]]], dtype=torch.float64)
IOU = {(0, 0): 4 / 9, (0, 1): 1 / 12, (1, 1): 0.5, (2, 0): 1 / 3}
L1 = {(0, 0): 0.75, (1, 1): 0.25, (2, 0): 0.25}
GIOU = {(0, 0): 4 / 9, (1, 1): 0.5, (2, 0): 1 / 3}


def teacher_context(teacher_pairs, layer=0):
    return LossContext(layer=layer, batch=SimpleNamespace(teacher=SimpleNamespace(matching=[teacher_pairs] * (layer + 1))))


def md(**kwargs):
    base = SetCriterion(HungarianMatcher(), {"class": 2.0, "bbox": 5.0, "giou": 2.0}, class_loss=QualityFocalLoss())
    return MatchingDistillation(base, **kwargs)


def test_matching_distillation_hand_values():
    """Own matching q0 -> GT0, q1 -> GT1; the teacher matched q0 -> GT1 and q2 -> GT0.
    Eq. 3: q0 gets both classes (t = 4/9 at class 0, t' = 1/12 at class 1), q1 its own, q2 the
    teacher's (1/3). Eq. 4: q2 (no own match) regresses to GT0, which then has two queries; q0's
    matching cost there is the larger (5 x 0.75 - 2 x 4/9 vs 5 x 0.25 - 2 x 1/3, equal class
    costs), so q0's own pair is the one weighted w_d = 0.51."""
    own, teacher = pairs([0, 1], [0, 1]), pairs([0, 2], [1, 0])
    cost = {q: 2 * focal_cost(0.0) + 5 * L1[(q, 0)] - 2 * GIOU[(q, 0)] for q in (0, 2)}
    assert cost[0] > cost[2]
    terms, indices = md()(LOGITS, BOXES, TARGETS, 2.0, indices=own, context=teacher_context(teacher))
    assert indices is own
    targets = {(0, 0): IOU[(0, 0)], (0, 1): IOU[(0, 1)], (1, 1): IOU[(1, 1)], (2, 0): IOU[(2, 0)]}
    expected_class = sum(qfl(sig(LOGITS[0, q, c].item()), targets.get((q, c), 0.0)) for q in range(3) for c in range(2))
    assert terms["loss_class"].item() == pytest.approx(2.0 * expected_class / 2.0, rel=1e-6)
    weight = {(0, 0): 0.51, (1, 1): 1.0, (2, 0): 1.0}
    assert terms["loss_bbox"].item() == pytest.approx(5.0 * sum(weight[p] * L1[p] for p in weight) / 2.0, rel=1e-6)
    assert terms["loss_giou"].item() == pytest.approx(2.0 * sum(weight[p] * (1 - GIOU[p]) for p in weight) / 2.0, rel=1e-6)
    # Table 4 row 1: MD on classification only: the boxes regress to the own pairs, unweighted.
    cls_only, _ = md(regression=False)(LOGITS, BOXES, TARGETS, 2.0, indices=own, context=teacher_context(teacher))
    assert cls_only["loss_class"].item() == pytest.approx(terms["loss_class"].item())
    assert cls_only["loss_bbox"].item() == pytest.approx(5.0 * (L1[(0, 0)] + L1[(1, 1)]) / 2.0, rel=1e-6)
    # Row 2: no down-weight; row 4: w_d on the class term of the same pair too.
    no_wd, _ = md(box_down_weight=1.0)(LOGITS, BOXES, TARGETS, 2.0, indices=own, context=teacher_context(teacher))
    assert no_wd["loss_bbox"].item() == pytest.approx(5.0 * sum(L1.values()) / 2.0, rel=1e-6)
    both, _ = md(class_down_weight=0.51)(LOGITS, BOXES, TARGETS, 2.0, indices=own, context=teacher_context(teacher))
    class_entry = qfl(sig(0.0), IOU[(0, 0)])
    assert both["loss_class"].item() == pytest.approx(terms["loss_class"].item() - 2.0 * 0.49 * class_entry / 2.0, rel=1e-6)
    # Conditional MD (IoU > 0.5): no teacher pair survives (1/12 and 1/3), so only the own targets remain.
    conditional, _ = md(conditional_iou=0.5)(LOGITS, BOXES, TARGETS, 2.0, indices=own, context=teacher_context(teacher))
    plain, _ = md().criterion(LOGITS, BOXES, TARGETS, 2.0, indices=own)
    for k in plain:
        assert conditional[k].item() == pytest.approx(plain[k].item(), rel=1e-9)


def test_matching_distillation_without_a_teacher_is_the_base_criterion():
    criterion = md()
    for context in (None, LossContext(layer="enc"), LossContext(layer=0, batch=SimpleNamespace(teacher=None))):
        terms, indices = criterion(LOGITS, BOXES, TARGETS, 2.0, context=context)
        expected, expected_indices = criterion.criterion(LOGITS, BOXES, TARGETS, 2.0)
        assert [q.tolist() for q, _ in indices] == [q.tolist() for q, _ in expected_indices]
        for k in expected:
            torch.testing.assert_close(terms[k], expected[k])
    # A group's teacher assignment (auxiliary groups) comes from its extras.
    group = QueryGroup(None, criterion, extras={"teacher_indices": pairs([0, 2], [1, 0])})
    a, _ = criterion(LOGITS, BOXES, TARGETS, 2.0, indices=pairs([0, 1], [0, 1]), context=LossContext(layer=1, group=group))
    b, _ = criterion(LOGITS, BOXES, TARGETS, 2.0, indices=pairs([0, 1], [0, 1]), context=teacher_context(pairs([0, 2], [1, 0])))
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def teacher_pass(logits, boxes, matching):
    layer = LayerPredictions(logits, boxes, torch.zeros(*logits.shape[:2], 4), boxes)
    return SimpleNamespace(decoder=DecoderOutput([layer]), matching=[matching])


def test_prediction_distillation_hand_values():
    """Eq. 5: the teacher matched its query 0 to GT 0 (class 0) with IoU' 4/9 (its box is q0 above):
    target[0, 0] = sigmoid(1)^0.25 * (4/9)^0.75, every other entry the teacher's score. Eq. 6: query 0
    regresses to the teacher's box with that weight when the teacher's IoU beats the student's."""
    t_logits = torch.tensor([[[1.0, -1.0], [-0.5, 0.0]]], dtype=torch.float64)
    t_boxes = BOXES[:, :2].clone()
    teacher = teacher_pass(t_logits, t_boxes, pairs([0], [0]))
    s_logits = torch.tensor([[[0.3, -0.2], [0.1, -1.5]]], dtype=torch.float64)
    group = QueryGroup(None, None, extras={"teacher": teacher})
    loss = PredictionDistillationLoss({"class": 1.0, "bbox": 1.0, "giou": 1.0})
    tood = sig(1.0) ** 0.25 * (4 / 9) ** 0.75
    target = [[tood, sig(-1.0)], [sig(-0.5), sig(0.0)]]
    expected_class = sum(qfl(sig(s_logits[0, q, c].item()), target[q][c]) for q in range(2) for c in range(2))
    # The student's box [0.05, 0.55]^2: IoU with GT 0 = 0.2025 / 0.2975 = 0.68 > 4/9: Listen2stu drops the box term.
    better = torch.tensor([[[0.3, 0.3, 0.5, 0.5], [0.6, 0.6, 0.2, 0.2]]], dtype=torch.float64)
    terms, _ = loss(s_logits, better, TARGETS, 2.0, context=LossContext(layer=0, group=group))
    assert terms["loss_class"].item() == pytest.approx(expected_class / 2.0, rel=1e-6)
    assert terms["loss_bbox"].item() == 0.0 and terms["loss_giou"].item() == 0.0
    # A student box [0.3, 0.8]^2: IoU 0.04 / 0.46 < 4/9: the box term counts, weighted by the Eq. 5 score.
    worse = torch.tensor([[[0.55, 0.55, 0.5, 0.5], [0.6, 0.6, 0.2, 0.2]]], dtype=torch.float64)
    terms, _ = loss(s_logits, worse, TARGETS, 2.0, context=LossContext(layer=0, group=group))
    l1 = sum(abs(a - b) for a, b in zip(worse[0, 0].tolist(), t_boxes[0, 0].tolist()))
    assert terms["loss_bbox"].item() == pytest.approx(tood * l1 / 2.0, rel=1e-6)
    # "tood" without Listen2stu regresses query 0 whatever the IoUs.
    loss.set_mode("tood")
    terms, _ = loss(s_logits, better, TARGETS, 2.0, context=LossContext(layer=0, group=group))
    l1 = sum(abs(a - b) for a, b in zip(better[0, 0].tolist(), t_boxes[0, 0].tolist()))
    assert terms["loss_bbox"].item() == pytest.approx(tood * l1 / 2.0, rel=1e-6)
    # "naive": the teacher's raw scores as targets, every query toward the teacher's box with weight 1.
    loss.set_mode("naive")
    terms, _ = loss(s_logits, better, TARGETS, 2.0, context=LossContext(layer=0, group=group))
    raw = [[sig(1.0), sig(-1.0)], [sig(-0.5), sig(0.0)]]
    assert terms["loss_class"].item() == pytest.approx(sum(qfl(sig(s_logits[0, q, c].item()), raw[q][c]) for q in range(2) for c in range(2)) / 2.0, rel=1e-6)
    l1_all = sum(abs(a - b) for q in range(2) for a, b in zip(better[0, q].tolist(), t_boxes[0, q].tolist()))
    assert terms["loss_bbox"].item() == pytest.approx(l1_all / 2.0, rel=1e-6)


def test_prediction_distillation_group_is_the_teachers_queries_at_the_students_positions():
    """Sec. 3.3 / Fig. 2: "we feed the EMA queries Q' together with the PE P and image feature F into
    the student decoder": the group's content queries are the teacher's initial ones (here all 1), its
    reference boxes, static positions and padding the student's (content 0, boxes (0.3, 0.4, 0.2, 0.1),
    positions 2, query 2 of image 1 padded), not the teacher's (boxes 0.5, positions -2); its
    criterion is the distillation loss with the teacher's pass in the group's extras."""
    valid = torch.tensor([[True, True, True], [True, True, False]])
    student = DecoderQueries(torch.zeros(2, 3, 4), torch.tensor([0.3, 0.4, 0.2, 0.1]).repeat(2, 3, 1), torch.full((2, 3, 4), 2.0), valid)
    teacher = SimpleNamespace(selection=SimpleNamespace(queries=DecoderQueries(
        torch.ones(2, 3, 4), torch.full((2, 3, 4), 0.5), torch.full((2, 3, 4), -2.0))))
    source = TeacherQueriesGroup(PredictionDistillationLoss())
    group = source(SimpleNamespace(selection=SimpleNamespace(queries=student), teacher=teacher))[""]
    assert torch.equal(group.queries.content, torch.ones(2, 3, 4))
    assert torch.equal(group.queries.reference, torch.tensor([0.3, 0.4, 0.2, 0.1]).repeat(2, 3, 1))
    assert torch.equal(group.queries.position, torch.full((2, 3, 4), 2.0)) and torch.equal(group.queries.valid, valid)
    assert group.criterion is source.distillation and group.extras["teacher"] is teacher


def test_query_prior_supervises_the_teacher_queries_with_the_teachers_assignment():
    """#27 item 11, Table 5's query-prior row (DETRDistill): the teacher's queries in the student
    decoder learn the GT on the pairs the teacher's same layer assigned them, not a new matching."""
    model = build(TINY, 2, "model.group_sources.pd_mode=query_prior")
    model.attach_teacher(ModelEMA(model, 0.9).module)
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    t = model.teacher.detection_pass(batch)
    group = model.group_sources["pd"](SimpleNamespace(teacher=t, selection=t.selection))[""]
    gt_criterion = model.group_sources["pd"].gt_criterion
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(t.decoder.layers[1].logits.shape, generator=generator)
    boxes = torch.rand(t.decoder.layers[1].boxes.shape, generator=generator) * 0.5 + 0.25
    losses, pairs = group.criterion(logits, boxes, t.targets, 2.0, context=LossContext(layer=1, group=group))
    assert all(torch.equal(a, b) for p, q in zip(pairs, t.matching[1]) for a, b in zip(p, q))
    expected, _ = gt_criterion(logits, boxes, t.targets, 2.0, t.matching[1])
    rematched, own = gt_criterion(logits, boxes, t.targets, 2.0)
    assert losses.keys() == expected.keys() and all(torch.equal(losses[k], expected[k]) for k in losses)
    assert any(not torch.equal(a, b) for p, q in zip(own, t.matching[1]) for a, b in zip(p, q))  # Hungarian would differ


def small_cfg(config=TINY, *overrides):
    return apply_overrides(LazyConfig.load(str(config)), SMALL + list(overrides))


def build(config=TINY, seed=0, *overrides):
    torch.manual_seed(seed)
    return instantiate(small_cfg(config, *overrides).model)


def od_on_plusplus():
    """The tiny ++ model of the core tests with what OD-DETR changes (``configs/models/od_detr.py``)."""
    cfg = tiny_model_config("plusplus", dec_layers=2, num_queries=20)
    cfg.update(LazyConfig.load(str(CONFIGS / "models" / "od_detr.py")).od_detr)
    torch.manual_seed(0)
    return instantiate(cfg)


def test_twins_share_a_proposal_on_the_two_stage_model():
    """#27 item 3: on the ++ the student and its EMA teacher would each take their own top-k; in
    training the student decodes its proposals at the teacher's tokens, so query i and teacher query
    i sit on one proposal (the same anchor), while inference selects by the student's own scores."""
    model = od_on_plusplus()
    assert model.select_teacher_proposals
    teacher = ModelEMA(model, 0.9).module
    with torch.no_grad():  # the teacher scores the tokens differently from the student
        teacher.transformer.enc_class_head.bias.add_(torch.randn_like(teacher.transformer.enc_class_head.bias))
        teacher.transformer.enc_class_head.weight.mul_(-1.0)
    model.attach_teacher(teacher)
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    selections = []
    select = model.transformer.select_queries
    given = []
    model.transformer.select_queries = lambda state, **kw: given.append(kw.get("indices")) or selections.append(select(state, **kw)) or selections[-1]
    model.train()
    model(batch)
    student = selections[-1]
    t = teacher.detection_pass(batch)
    own = select(model.encode_and_select(batch)[1])
    assert not torch.equal(own.topk_indices, t.selection.topk_indices)  # the two would differ
    assert torch.equal(student.topk_indices, t.selection.topk_indices)
    anchors = lambda sel: sel.encoder_predictions["anchors"]  # noqa: E731  (the proposal each query starts from)
    if "valid" in student.encoder_predictions:  # every token's predictions: gather the selected ones
        anchors = lambda sel: sel.encoder_predictions["anchors"].gather(1, sel.topk_indices[..., None].expand(-1, -1, 4))  # noqa: E731
    torch.testing.assert_close(anchors(student), anchors(t.selection), rtol=0, atol=0)
    model.eval()
    with torch.no_grad():
        model(batch)
    assert given[0] is t.selection.topk_indices or torch.equal(given[0], t.selection.topk_indices)
    assert given[-1] is None  # inference: the student's own top-k


def test_auxiliary_groups_select_two_lowest_cost_queries_per_gt_per_stage():
    model = od_on_plusplus()
    teacher = ModelEMA(model, 0.9).module
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    t = teacher.detection_pass(batch)
    source = model.group_sources["ag"]
    assert isinstance(source, TeacherStageGroups) and source.queries_per_gt == 2
    groups = source(SimpleNamespace(teacher=t, targets=t.targets, transformer=model.transformer))
    assert list(groups) == ["0", "1"]  # one group per teacher stage
    matcher = source.criterion.matcher
    for stage, group in groups.items():
        layer = t.decoder.layers[int(stage)]
        cost = matcher.cost_matrix(layer.logits[0], layer.boxes[0], t.targets[0]["labels"], t.targets[0]["boxes"])
        expected = cost.argsort(0)[:2].T.reshape(-1)  # GT 0's two cheapest queries, then GT 1's
        q = group.queries
        assert torch.equal(q.valid, torch.tensor([[True] * 4, [False] * 4]))  # 2 GTs x 2 / no GT (padding)
        torch.testing.assert_close(q.content[0], layer.hidden[0, expected], rtol=0, atol=0)
        torch.testing.assert_close(q.reference[0], layer.boxes[0, expected], rtol=0, atol=0)
        assert q.position is not None and q.position.shape == (2, 4, model.transformer.decoder.d_model)
        # The teacher's original assignment of the selected queries.
        gt_of = {qi: gi for qi, gi in zip(*(x.tolist() for x in t.matching[int(stage)][0]))}
        entries, gts = group.extras["teacher_indices"][0]
        assert [(e, gt_of[expected[e].item()]) for e in entries.tolist()] == list(zip(entries.tolist(), gts.tolist()))
        assert all(expected[e].item() in gt_of for e in entries.tolist())
    # In the model's pass the groups are isolated: a group decoded alone gives the same predictions.
    model.eval()
    _, state, selection = model.encode_and_select(batch)
    with torch.no_grad():
        joint = model.transformer.decode(selection.queries, state, groups={f"ag_{k}": g for k, g in groups.items()})
        alone = model.transformer.decode(groups["1"].queries, state)
    valid = groups["1"].queries.valid
    torch.testing.assert_close(joint.groups["ag_1"][-1].boxes[valid], alone.layers[-1].boxes[valid], rtol=0, atol=1e-5)


def test_auxiliary_groups_of_the_single_stage_model_take_the_slots_positions():
    """Def-DETR+ encodes a query slot's static position and no box: an auxiliary query takes the
    positional part of the teacher query it came from and the teacher's whole box as its anchor
    (``queries_at``; #27 item 2: w and h included), and its first layer refines that box."""
    model = build(TINY, 1)
    t = ModelEMA(model, 0.9).module.detection_pass(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    source = model.group_sources["ag"]
    groups = source(SimpleNamespace(teacher=t, targets=t.targets, transformer=model.transformer))
    chosen, _ = source.select(t.decoder.layers[0], t.matching[0], t.targets)
    q = groups["0"].queries
    d = model.transformer.decoder.d_model
    torch.testing.assert_close(q.reference[0], t.decoder.layers[0].boxes[0, chosen[0]], rtol=0, atol=0)
    torch.testing.assert_close(q.position[0], model.transformer.query_embedding.weight[chosen[0], :d], rtol=0, atol=0)
    # The student's first layer starts from the teacher's box: its w / h move by the head's delta only.
    model.eval()
    _, state, selection = model.encode_and_select(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    with torch.no_grad():
        out = model.transformer.decode(selection.queries, state, groups={"ag_0": groups["0"]})
        first = out.groups["ag_0"][0]
        delta = model.transformer.decoder.box_heads[0](first.hidden)
    valid = q.valid[0]
    expected = (delta[0] + torch.logit(q.reference[0])).sigmoid()
    torch.testing.assert_close(first.boxes[0][valid], expected[valid], rtol=0, atol=1e-6)


def test_stability_metrics_on_hand_made_matchings():
    # 2 images x 4 queries: -1 = unmatched.
    first = assignment_vectors([(torch.tensor([0, 2]), torch.tensor([1, 0])), (torch.tensor([3]), torch.tensor([0]))], 4)
    assert first.tolist() == [[1, -1, 0, -1], [-1, -1, -1, 0]]
    second = assignment_vectors([(torch.tensor([0, 1]), torch.tensor([1, 0])), (torch.tensor([3]), torch.tensor([0]))], 4)
    # Matched in either: (0,0) same, (0,1) new, (0,2) lost, (1,3) same -> 2 of 4 changed.
    assert instability(first, second) == pytest.approx(0.5)
    assert instability(first, first) == 0.0
    teacher = torch.tensor([[1, 0, -1, -1], [-1, -1, -1, 1]])
    # The student's matched queries (0,0), (0,2), (1,3): the teacher agrees on (0,0) only.
    assert consistency(first, teacher) == pytest.approx(1 / 3)


def test_inference_equals_the_stripped_baseline_bit_for_bit():
    """At inference OD-DETR is the student alone: its outputs equal the baseline model's loaded with the
    stripped checkpoint (the groups, distillation and teacher do not exist in eval mode)."""
    model = build(TINY, 3)
    model.attach_teacher(ModelEMA(model, 0.9).module)
    baseline = build(BASELINE, 4)
    state = strip_training_parts(model.state_dict())
    assert state.keys() == model.state_dict().keys()  # OD-DETR adds no parameters
    baseline.load_state_dict(state, strict=True)
    model.eval()
    baseline.eval()
    calls = []
    model.group_sources["pd"].register_forward_hook(lambda *a: calls.append(1))
    batch = synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES)
    with torch.no_grad():
        got, expected = model(batch), baseline(batch)
    assert not calls
    for a, b in zip(got, expected):
        a, b = a["instances"], b["instances"]
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


@pytest.mark.parametrize("name", ["od_detr_shapes_tiny", "od_detr_shapes_tiny_baseline", "od_deformable_detr_r50_12ep",
                                  "od_deformable_detr_r50_24ep", "od_deformable_detr_plusplus_r50_12ep"])
def test_configs(name):
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    assert cfg.train.output_dir.endswith(name)
    if name.endswith("baseline"):
        assert isinstance(instantiate(cfg.model.criterion.class_loss), QualityFocalLoss) and not instantiate(cfg.model).requires_teacher
        assert cfg.train.ema.decay == 0.99  # as OD-DETR's tiny config, so the stability curves compare
        return
    assert cfg.train.ema.decay == (0.99 if "shapes" in name else 0.9996) and cfg.train.ema.stop_update_iter == "first_lr_decay"
    assert cfg.model.criterion.box_down_weight == 0.51 and isinstance(instantiate(cfg.model.criterion.criterion.class_loss), QualityFocalLoss)
    assert cfg.model.group_sources.queries_per_gt == 2 and (cfg.model.group_sources.alpha, cfg.model.group_sources.beta) == (0.25, 0.75)
    assert cfg.model.transformer.decoder.share_layers == ("plusplus" not in name)
    assert cfg.optimizer.weight_decay == 2e-5  # Sec. 4.1 (#27 item 7)
    stop = resolve_stop_update_iter(cfg.train.ema.stop_update_iter, instantiate(cfg.lr_multiplier), cfg.train.max_iter)
    assert stop == {"od_deformable_detr_r50_12ep": 82500, "od_deformable_detr_r50_24ep": 165000,
                    "od_deformable_detr_plusplus_r50_12ep": 82500, "od_detr_shapes_tiny": 900}[name]


def test_the_shared_decoder_shares_the_heads_as_table_8_counts():
    """Table 8: Def-DETR+ 40.6M -> shared 34.7M (-5.9M); sharing the layers alone removes 5.1M, the
    layers and the class / box heads 5.87M (#27 item 1; 80 classes here)."""
    shared = instantiate(LazyConfig.load(str(CONFIGS / "od_deformable_detr_r50_12ep.py")).model)
    unshared = instantiate(LazyConfig.load(str(CONFIGS / "ablations" / "table8_unshared_decoder.py")).model)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    assert count(shared) == pytest.approx(34.96, abs=0.1) and count(unshared) - count(shared) == pytest.approx(5.87, abs=0.05)
    decoder = shared.transformer.decoder
    assert all(h is decoder.class_heads[0] for h in decoder.class_heads) and all(h is decoder.box_heads[0] for h in decoder.box_heads)
    baseline = LazyConfig.load(str(BASELINE)).model.transformer.decoder
    assert baseline.share_layers and baseline.share_heads  # the tiny baseline's decoder is OD-DETR's


def test_training_with_the_teacher_stop_update_and_stability_png(tiny, shapes_mini, tmp_path):
    """A few iterations of ``od_detr_shapes_tiny.py`` through train_net: the teacher is the EMA, it
    stops updating at the first LR decay (iteration 3 of 5 here), the group losses are logged and the
    stability hook writes its curves."""
    cfg = apply_overrides(LazyConfig.load(str(TINY)), tiny.model_overrides + tiny.data_overrides + [
        f"train.output_dir={tmp_path}", "train.eval_period=0", "train.max_iter=5", "lr_multiplier.warmup_length=0",
        "lr_multiplier.scheduler.milestones=[600]", "train.ema.decay=0.5", "train.checkpointer.period=1000"])
    cfg.train.hooks[0].update(period=2, num_images=4)
    model = tiny.run_train(cfg)[0]
    final = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["ema"]["updates"] == 3  # iterations 0, 1, 2; the LR drops at 0.6 x 5 = 3
    assert model.teacher is not None
    rows = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert any("pd/loss_class_0" in r for r in rows) and any("ag_0/loss_class_0" in r for r in rows)
    assert any("stability/consistency" in r for r in rows) and any("stability/student_instability" in r for r in rows)
    assert (tmp_path / "matching_stability.png").exists()


ABLATIONS = {  # file: (PD, AG, regression, conditional IoU, box w_d, class w_d, pd mode, ag matching, stop update, shared)
    "table2_md": (False, False, True, None, 0.51, None, "tood_listen2stu", "md", True, True),
    "table2_md_pd": (True, False, True, None, 0.51, None, "tood_listen2stu", "md", True, True),
    "table2_md_ag": (False, True, True, None, 0.51, None, "tood_listen2stu", "md", True, True),
    "table3_qfl_md": (False, False, False, None, 0.51, None, "tood_listen2stu", "md", True, True),
    "table3_conditional_md": (False, False, False, 0.5, 0.51, None, "tood_listen2stu", "md", True, True),
    "table3_qfl_conditional_md": (False, False, False, 0.5, 0.51, None, "tood_listen2stu", "md", True, True),
    "table4_no_down_weight": (False, False, True, None, 1.0, None, "tood_listen2stu", "md", True, True),
    "table4_down_weight_cls_and_reg": (False, False, True, None, 0.51, 0.51, "tood_listen2stu", "md", True, True),
    "table5_pd_naive": (True, False, True, None, 0.51, None, "naive", "md", False, True),
    "table5_pd_tood": (True, False, True, None, 0.51, None, "tood", "md", False, True),
    "table5_pd_tood_listen2stu": (True, False, True, None, 0.51, None, "tood_listen2stu", "md", False, True),
    "table5_pd_query_prior": (True, False, True, None, 0.51, None, "query_prior", "md", True, True),
    "table6_ag_original": (False, True, True, None, 0.51, None, "tood_listen2stu", "original", True, True),
    "table6_ag_rematch": (False, True, True, None, 0.51, None, "tood_listen2stu", "rematch", True, True),
    "table8_unshared_decoder": (True, True, True, None, 0.51, None, "tood_listen2stu", "md", True, False),
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_configs_are_the_table_rows(name):
    cfg = LazyConfig.load(str(CONFIGS / "ablations" / f"{name}.py"))
    c, g = cfg.model.criterion, cfg.model.group_sources
    got = (g.prediction_distillation, g.auxiliary_groups, c.regression, c.conditional_iou, c.box_down_weight, c.class_down_weight,
           g.pd_mode, g.ag_matching, cfg.train.ema.stop_update_iter == "first_lr_decay", cfg.model.transformer.decoder.share_layers)
    assert got == ABLATIONS[name]
    assert cfg.train.max_iter == 24 * 7500 and cfg.train.output_dir.endswith(name)
    assert isinstance(instantiate(c.criterion.class_loss), FocalLoss if name == "table3_conditional_md" else QualityFocalLoss)


def test_qfl_baseline_ablation_has_no_teacher():
    cfg = LazyConfig.load(str(CONFIGS / "ablations" / "table3_qfl_without_md.py"))
    assert isinstance(instantiate(cfg.model.criterion.class_loss), QualityFocalLoss) and cfg.model.group_sources == {} and not cfg.train.ema.enabled


def test_compare_stability_tool(tmp_path):
    from detr_plus_projects.od_detr.tools import compare_stability

    for name, value in (("a", 0.2), ("b", 0.1)):
        (tmp_path / name).mkdir()
        rows = [{"iteration": 99, "consistency": 0.5}, {"iteration": 199, "student_instability": value, "consistency": 0.6}]
        (tmp_path / name / "matching_stability.json").write_text(json.dumps(rows))
    merged = compare_stability.merged_history([str(tmp_path / "a"), str(tmp_path / "b")])
    assert merged[1] == {"iteration": 199, "a: student_instability": 0.2, "a: consistency": 0.6, "b: student_instability": 0.1,
                         "b: consistency": 0.6}
    out = compare_stability.main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "s.png")])
    assert Path(out).stat().st_size > 1000
