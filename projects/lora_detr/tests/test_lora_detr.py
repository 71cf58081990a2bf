"""LoRA-DETR (projects/lora_detr) on tiny models: ``configs/lora_detr_shapes_tiny.py`` (and the core
``configs/shapes/deformable_detr_tiny.py`` as the baseline) with 1 encoder / 2 decoder layers,
20 queries and two synthetic 64-96 px images."""
import glob
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from route_nms_case import nms_case  # tests/route_nms_case.py (pytest.ini: pythonpath = tests)
import detr_plus  # noqa: F401  (detectron2 compatibility layer first)
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

from detr_plus.engine.config import apply_overrides
from detr_plus.engine.optim import build_adamw
from detr_plus.modeling import (DeformableDETR, FFNBlock, FocalLoss, LossContext, OneToManyMatcher, OwnFFNVariant, VarifocalPlusLoss,
                                 strip_training_parts)
from detr_plus.modeling import SetCriterion, matching_quality
from detr_plus_projects.lora_detr.modeling import (TABLE4_DIVERSE_K, LoRAFFNBranch, O2OMergedCriterion, build_lora_branches,
                                                   lora_param_count, union_pairs)

REPO = Path(__file__).resolve().parents[3]
PROJECT_CONFIGS = REPO / "projects" / "lora_detr" / "configs"
LORA_TINY = PROJECT_CONFIGS / "lora_detr_shapes_tiny.py"
BASE_TINY = REPO / "configs" / "shapes" / "deformable_detr_tiny.py"
TINY = ["model.transformer.encoder.num_layers=1", "model.transformer.decoder.num_layers=2", "model.transformer.num_queries=20"]
NUM_LAYERS, D_MODEL, D_FFN, RANK = 2, 128, 512, 32  # the tiny config's decoder with the overrides above


def tiny_cfg(path=LORA_TINY, *overrides):
    return apply_overrides(LazyConfig.load(str(path)), TINY + list(overrides))


def build(cfg, seed=0) -> DeformableDETR:
    torch.manual_seed(seed)
    return instantiate(cfg.model)


def synthetic_batch(seed=0):
    """Two uint8 images, 64 x 80 with three boxes and 96 x 72 with two (classes of the tiny config: 0-3)."""
    gen = torch.Generator().manual_seed(seed)
    gts = [
        ((64, 80), [[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 75.0, 60.0], [8.0, 36.0, 28.0, 62.0]], [0, 2, 3]),
        ((96, 72), [[10.0, 12.0, 50.0, 70.0], [40.0, 50.0, 70.0, 90.0]], [1, 1]),
    ]
    batch = []
    for (h, w), boxes, classes in gts:
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor(boxes))
        instances.gt_classes = torch.tensor(classes)
        batch.append({"image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8), "instances": instances})
    return batch


def decode_all_branches(model, batch):
    images, masks = model.preprocess_images(batch)
    _, features, level_masks, pos = model.extract_features(images, masks)
    out, _, _ = model.transformer(features, level_masks, pos, variants=model.variants)
    return out


def predictions(results):
    return [(r["instances"].pred_boxes.tensor, r["instances"].scores, r["instances"].pred_classes) for r in results]


def assert_same_predictions(a, b):
    for (boxes_a, scores_a, classes_a), (boxes_b, scores_b, classes_b) in zip(predictions(a), predictions(b)):
        assert torch.equal(boxes_a, boxes_b) and torch.equal(scores_a, scores_b) and torch.equal(classes_a, classes_b)


# --- Eq. 3-4: the LoRA branch ---------------------------------------------------------------------
def test_zero_b_branch_equals_main_ffn_exactly_and_follows_eq_3_4():
    torch.manual_seed(0)
    block, query = FFNBlock(D_MODEL, D_FFN), torch.randn(2, 7, D_MODEL)
    branch = LoRAFFNBranch(D_MODEL, D_FFN, rank=RANK)
    assert torch.equal(branch.feed_forward(query, None, block), block(query))  # B = 0: bit-identical

    # With nonzero A, B: norm(q + W2' relu(W1' q + b1) + b2), W_j' = W_j + s B_j A_j (merged weights).
    branch = LoRAFFNBranch(D_MODEL, D_FFN, rank=RANK, scaling=0.5, init="normal")
    ffn, s = block.ffn, 0.5
    w1 = ffn.linear1.weight + s * branch.lora_b1 @ branch.lora_a1
    w2 = ffn.linear2.weight + s * branch.lora_b2 @ branch.lora_a2
    expected = block.norm(query + torch.relu(query @ w1.t() + ffn.linear1.bias) @ w2.t() + ffn.linear2.bias)
    torch.testing.assert_close(branch.feed_forward(query, None, block), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(branch.feed_forward(query, None, block), block(query))
    with pytest.raises(ValueError, match="init"):
        LoRAFFNBranch(D_MODEL, D_FFN, init="kaiming")


def test_xavier_init_draws_a_and_b_within_the_xavier_bounds():
    """init="xavier" (the authors' effective init, docs/authors_code_facts.md#lora-detr-branches-and-lora-initialisation): U(-a, a), a = sqrt(6 / (fan_in + fan_out)),
    on each of A1 (32 x 128), B1 (512 x 32), A2 (32 x 512), B2 (128 x 32); B is not zero."""
    torch.manual_seed(0)
    branch = LoRAFFNBranch(D_MODEL, D_FFN, rank=RANK, init="xavier")
    bounds = {"lora_a1": math.sqrt(6 / 160), "lora_b1": math.sqrt(6 / 544), "lora_a2": math.sqrt(6 / 544),
              "lora_b2": math.sqrt(6 / 160)}
    assert bounds["lora_a1"] == pytest.approx(0.193649, abs=1e-6) and bounds["lora_b1"] == pytest.approx(0.105021, abs=1e-6)
    for name, bound in bounds.items():
        w = getattr(branch, name)
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.99 * bound  # uniform up to the bound (thousands of draws)
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)  # std of U(-a, a)
    block, query = FFNBlock(D_MODEL, D_FFN), torch.randn(2, 7, D_MODEL)
    assert not torch.allclose(branch.feed_forward(query, None, block), block(query))  # B != 0: differs from the main FFN
    # Through the config: the model keeps the xavier draw (the core's xavier pass does not touch variants).
    model = build(tiny_cfg(LORA_TINY, "model.variants.init=xavier"))
    b2 = model.variants["aux2"].layer_variants[1].lora_b2
    assert 0.99 * bounds["lora_b2"] < b2.abs().max() <= bounds["lora_b2"]


def test_zero_b_branches_predict_what_the_main_branch_predicts_in_every_layer():
    """... from one pass of each layer: self- and cross-attention run once for all branches (Eq. 5-6)."""
    model = build(tiny_cfg()).train()
    calls = []
    for layer in model.transformer.decoder.layers:
        for block in (layer.self_attn, layer.cross_attn):
            block.register_forward_hook(lambda module, args, output: calls.append(module))
    with torch.no_grad():
        out = decode_all_branches(model, synthetic_batch())
    assert len(calls) == 2 * NUM_LAYERS and len(set(map(id, calls))) == 2 * NUM_LAYERS
    assert list(out.variants) == ["aux0", "aux1", "aux2"]
    for layers in out.variants.values():
        assert len(layers) == NUM_LAYERS
        for primary, branch in zip(out.layers, layers):
            for field in ("hidden", "logits", "boxes"):
                assert torch.equal(getattr(branch, field), getattr(primary, field))


# --- joint optimisation: the base FFN is trained by the auxiliary losses --------------------------
def test_auxiliary_losses_reach_the_shared_base_ffn():
    cfg = tiny_cfg()
    model = build(cfg).train()
    losses = model(synthetic_batch())
    aux = {k: v for k, v in losses.items() if "/" in k}
    assert {k.split("/")[0] for k in aux} == {"aux0", "aux1", "aux2"}
    assert {f"aux2/loss_{t}_{i}" for t in ("class", "bbox", "giou") for i in range(NUM_LAYERS)} <= set(aux)
    sum(aux.values()).backward()
    for i, layer in enumerate(model.transformer.decoder.layers):
        for linear in (layer.ffn.ffn.linear1, layer.ffn.ffn.linear2):
            assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0, f"layer {i}: no aux gradient"
        branch = model.variants["aux0"].layer_variants[i]
        assert branch.lora_b1.grad.abs().sum() > 0 and branch.lora_b2.grad.abs().sum() > 0
        assert branch.lora_a1.grad.abs().sum() == 0  # dL/dA = s B^T (...) = 0 while B = 0

    # One AdamW step of the config's optimizer on the auxiliary losses moves the base FFN.
    cfg.optimizer.model = model
    optimizer = instantiate(cfg.optimizer)
    before = model.transformer.decoder.layers[-1].ffn.ffn.linear1.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.transformer.decoder.layers[-1].ffn.ffn.linear1.weight, before)


def test_naive_ffn_branches_leave_the_last_base_ffn_without_auxiliary_gradient():
    """Fig. 1(c): each branch has its own FFN, so the last layer's base FFN gets no auxiliary gradient."""
    cfg = tiny_cfg()
    cfg.model.variants.naive = True
    model = build(cfg).train()
    assert all(isinstance(b, OwnFFNVariant) for variant in model.variants.values() for b in variant.layer_variants)
    losses = model(synthetic_batch())
    sum(v for k, v in losses.items() if "/" in k).backward()
    assert model.transformer.decoder.layers[-1].ffn.ffn.linear1.weight.grad is None
    assert model.variants["aux0"].layer_variants[-1].ffn.linear1.weight.grad.abs().sum() > 0
    assert model.transformer.decoder.layers[0].ffn.ffn.linear1.weight.grad.abs().sum() > 0  # via layer 1's input


def box_head_grad(loss, head):
    grads = torch.autograd.grad(loss, list(head.parameters()), allow_unused=True, retain_graph=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_branch_box_losses_reach_no_earlier_box_head_with_a_detached_reference():
    """The authors' code refines the o2m branches' boxes from the primary queries' DETACHED reference
    (docs/authors_code_facts.md#lora-detr-branches-and-lora-initialisation; ``variants.detach_reference``, default True): a branch's layer-1 box loss reaches
    box_heads[1] only, while the primary layer-1 loss reaches box_heads[0] through look-forward-twice
    (and so does a branch's without the option). The loss values do not depend on the option."""
    assert tiny_cfg().model.variants.detach_reference is True
    values = {}
    for detach in (True, False):
        model = build(tiny_cfg(LORA_TINY, f"model.variants.detach_reference={detach}")).train()
        assert model.transformer.decoder.look_forward_twice
        assert all(variant.detach_reference == detach for variant in model.variants.values())
        losses = model(synthetic_batch())
        heads = model.transformer.decoder.box_heads
        assert box_head_grad(losses["loss_bbox"] + losses["loss_giou"], heads[0]) > 0  # primary, layer 1 (the last)
        for name in model.variants:
            branch_box = losses[f"{name}/loss_bbox_1"] + losses[f"{name}/loss_giou_1"]
            assert box_head_grad(branch_box, heads[1]) > 0
            reached = box_head_grad(branch_box, heads[0])
            assert reached == 0 if detach else reached > 0, (detach, name, reached)
        values[detach] = {k: v.detach() for k, v in losses.items()}
    for k in values[True]:
        torch.testing.assert_close(values[True][k], values[False][k], rtol=0, atol=0)


# --- Eq. 7: assignment per branch -----------------------------------------------------------------
def random_predictions(num_queries=40, num_classes=3, seed=0):
    """Queries jittered around the GTs (many candidates above tau) and random logits."""
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for n in (3, 2):
        centres = torch.rand(n, 2, generator=gen) * 0.5 + 0.25
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=gen),
                        "boxes": torch.cat([centres, torch.rand(n, 2, generator=gen) * 0.2 + 0.2], 1)})
    boxes = []
    for t in targets:
        owner = torch.randint(0, len(t["boxes"]), (num_queries,), generator=gen)
        jitter = 1 + 0.15 * torch.randn(num_queries, 4, generator=gen)
        boxes.append((t["boxes"][owner] * jitter).clamp(0.02, 0.98))
    logits = torch.randn(2, num_queries, num_classes, generator=gen) + 1.0
    return logits, torch.stack(boxes), targets


@pytest.mark.parametrize("taus,alphas", [(None, None), ((0.3, 0.4, 0.5), None), (None, (0.1, 0.3, 0.5))])
def test_each_branch_assigns_at_most_k_positives_per_gt_above_tau(taus, alphas):
    branches = build_lora_branches(1, 16, 32, ks=TABLE4_DIVERSE_K[3], taus=taus, alphas=alphas)
    logits, boxes, targets = random_predictions()
    for i, branch in enumerate(branches.values()):
        matcher, criterion = branch.criterion.matcher, branch.criterion
        k, tau, alpha = TABLE4_DIVERSE_K[3][i], (taus or [0.4] * 3)[i], (alphas or [0.3] * 3)[i]
        assert (matcher.topk, matcher.threshold, matcher.class_weight) == (k, tau, alpha)
        assert criterion.class_loss.quality == "matching_score" and criterion.class_loss.quality_class_weight == alpha
        assert branch.loss_scale == pytest.approx(1 / 3)
        binding = False
        for b, (query_idx, gt_idx) in enumerate(matcher(logits, boxes, targets)):
            m = matching_quality(logits[b], boxes[b], targets[b]["labels"], targets[b]["boxes"], alpha)
            top1 = m.argmax(0)
            assert len(set(query_idx.tolist())) == len(query_idx)  # a query has at most one GT
            counts = torch.bincount(gt_idx, minlength=len(targets[b]["labels"]))
            assert counts.max() <= k
            binding |= bool(counts.max() == k)
            for q, g in zip(query_idx.tolist(), gt_idx.tolist()):
                assert m[q, g] >= tau or q == top1[g]  # M >= tau, or the GT's kept top-1 query
            assert set(top1.tolist()) <= set(query_idx.tolist())
        assert binding, f"k={k} never reached: the example does not test the cap"


# --- Eq. 8: VFL+ through the criteria -------------------------------------------------------------
def test_vfl_plus_equals_a_hand_computation_for_both_branches():
    """One image, 2 queries x 2 classes, one GT of class 1 at (0.5, 0.5, 0.4, 0.4). Query 0 has the
    box (0.5, 0.5, 0.4, 0.2) (IoU 0.5), query 1 a far box (IoU 0). Every VFL+ term is x 0.25 before the
    sum / GT count, as in the authors' code (docs/authors_code_facts.md#lora-detr-vfl-and-loss-weights), in both branches; vfl_scale=1 is Eq. 8."""
    logits = torch.tensor([[[0.2, 1.0], [-1.0, 0.5]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731

    def negative(x, gamma=1.5):
        return -(sig(x) ** gamma) * math.log(1 - sig(x))

    def positive(x, s):
        return -s * math.log(sig(x)) - (1 - s) * math.log(1 - sig(x))

    negatives = negative(0.2) + negative(-1.0) + negative(0.5)
    # Auxiliary branch: s = M = 0.3 p + 0.7 IoU (Eq. 7); query 1 has M = 0.3 sigmoid(0.5) < tau: negative.
    aux = build_lora_branches(1, 16, 32, ks=[6])["aux0"].criterion
    terms, indices = aux(logits, boxes, targets, num_boxes=1.0)
    assert [(q.tolist(), g.tolist()) for q, g in indices] == [([0], [0])]
    s = 0.3 * sig(1.0) + 0.7 * 0.5
    assert s == pytest.approx(0.569318, abs=1e-6)
    assert terms["loss_class"].item() == pytest.approx(2.0 * 0.25 * (positive(1.0, s) + negatives), rel=1e-5)
    assert terms["loss_class"].item() == pytest.approx(0.795703, abs=1e-5)  # the same, evaluated
    eq8 = build_lora_branches(1, 16, 32, ks=[6], vfl_scale=1.0)["aux0"].criterion
    assert eq8(logits, boxes, targets, num_boxes=1.0)[0]["loss_class"].item() == pytest.approx(4 * 0.795703, abs=4e-5)
    # Primary branch (the LoRA-DETR config's criterion): Hungarian, s = IoU, class weight 1; the box
    # losses are not scaled (L1 |0.2 - 0.4| x 5 = 1.0).
    primary = instantiate(tiny_cfg().model.criterion)
    terms, indices = primary(logits, boxes, targets, num_boxes=1.0)
    assert [(q.tolist(), g.tolist()) for q, g in indices] == [([0], [0])]
    assert terms["loss_class"].item() == pytest.approx(1.0 * 0.25 * (positive(1.0, 0.5) + negatives), rel=1e-5)
    assert terms["loss_class"].item() == pytest.approx(0.415181, abs=1e-5)
    assert terms["loss_bbox"].item() == pytest.approx(1.0, rel=1e-6)
    # Focal loss stays selectable: alpha 0.25, gamma 2.
    focal = build_lora_branches(1, 16, 32, ks=[6], class_loss="focal")["aux0"].criterion
    terms, _ = focal(logits, boxes, targets, num_boxes=1.0)
    fl_pos = 0.25 * (1 - sig(1.0)) ** 2 * -math.log(sig(1.0))
    fl_neg = sum(0.75 * sig(x) ** 2 * -math.log(1 - sig(x)) for x in (0.2, -1.0, 0.5))
    assert terms["loss_class"].item() == pytest.approx(2.0 * (fl_pos + fl_neg), rel=1e-5)


# --- the 900-query recipe: o2o positives merged into each branch's --------------------------------
def pairs_of(indices):
    return [list(zip(q.tolist(), g.tolist())) for q, g in indices]


def test_o2o_positives_are_merged_into_the_branch_positives_once():
    """Two images, 5 queries x 3 classes, all logits 0 (p = 0.5, so M = 0.15 + 0.7 IoU).
    Image 0: GT0 (0.3, 0.3, 0.2, 0.2) class 0, GT1 (0.7, 0.7, 0.2, 0.2) class 1; q0 = GT0, q1 = GT0
    shifted by 0.02 (IoU 0.818, M 0.72), q2 = GT1, q3 and q4 far. Image 1: GT0 (0.5, 0.5, 0.4, 0.4)
    class 2; q1 = GT0, the others far. One-to-many (k 6, tau 0.4): {(0,0), (1,0), (2,1)} and {(1,0)}.
    The layer's one-to-one pairs (hand-made): {(0,0), (3,1)} and {(4,0)}: (0,0) is already there."""
    far = [0.1, 0.9, 0.1, 0.1]
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.32, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], far, [0.9, 0.1, 0.1, 0.1]],
                          [far, [0.5, 0.5, 0.4, 0.4], far, far, [0.1, 0.1, 0.1, 0.1]]])
    logits = torch.zeros(2, 5, 3)
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    o2o = [(torch.tensor([0, 3]), torch.tensor([0, 1])), (torch.tensor([4]), torch.tensor([0]))]
    matcher = OneToManyMatcher(topk=6, threshold=0.4, class_weight=0.3, max_positive_ratio=1.0)
    assert pairs_of(matcher(logits, boxes, targets)) == [[(0, 0), (1, 0), (2, 1)], [(1, 0)]]
    weights = {"class": 2.0, "bbox": 5.0, "giou": 2.0}
    merged = O2OMergedCriterion(SetCriterion(matcher, weights, class_loss=VarifocalPlusLoss(scale=0.25, quality="matching_score")))
    context = LossContext(layer=0, name="aux0", matching={"primary": [o2o]})
    terms, indices = merged(logits, boxes, targets, num_boxes=3.0, context=context)
    assert pairs_of(indices) == [[(0, 0), (1, 0), (2, 1), (3, 1)], [(1, 0), (4, 0)]]
    # L1 of the merged pairs: q1 0.02, q3 vs GT1 0.6 + 0.2 + 0.1 + 0.1, image 1's q4 0.4 + 0.4 + 0.3 + 0.3.
    assert terms["loss_bbox"].item() == pytest.approx(5.0 * (0.02 + 1.0 + 1.4) / 3, rel=1e-5)
    # At p = 0.5 a positive's BCE is log 2 whatever s, a negative's 0.5^1.5 log 2: 6 positives, 24 negatives.
    assert terms["loss_class"].item() == pytest.approx(2.0 * 0.25 * (6 + 24 * 0.5 ** 1.5) * math.log(2) / 3, rel=1e-5)
    # The union itself: no (query, gt) pair twice; a query may get a second GT (both regressed).
    union, added = union_pairs([(torch.tensor([1, 4]), torch.tensor([0, 0]))], [(torch.tensor([1, 2, 4]), torch.tensor([1, 0, 0]))])
    assert pairs_of(union) == [[(1, 0), (1, 1), (2, 0), (4, 0)]] and pairs_of(added) == [[(1, 1), (2, 0)]]
    # Given pairs are used as they are; without the layer's one-to-one pairs it refuses.
    assert pairs_of(merged(logits, boxes, targets, 3.0, indices=o2o, context=context)[1]) == pairs_of(o2o)
    with pytest.raises(ValueError, match="primary"):
        merged(logits, boxes, targets, num_boxes=3.0)


def test_the_plusplus_config_merges_each_layers_o2o_pairs_into_every_branch():
    """Through the model: with ``variants.merge_o2o_positives`` each branch's pairs in layer i are exactly its
    one-to-many pairs (the same model without the option) united with the primary pairs of layer i."""
    assert LazyConfig.load(str(PROJECT_CONFIGS / "lora_deformable_detr_plusplus_r50_12ep.py")).model.variants.merge_o2o_positives
    assert not tiny_cfg().model.variants.merge_o2o_positives
    matching = {}
    for merge in (False, True):
        # init "normal": the branches predict other boxes than the primary queries, so their pairs differ.
        model = build(tiny_cfg(LORA_TINY, f"model.variants.merge_o2o_positives={merge}", "model.variants.init=normal")).train()
        assert all(isinstance(variant.criterion, O2OMergedCriterion) == merge for variant in model.variants.values())
        matching[merge] = model.training_losses(synthetic_batch())[1]
    added = 0
    for name in model.variants:
        for layer in range(NUM_LAYERS):
            primary = matching[True]["primary"][layer]
            assert pairs_of(primary) == pairs_of(matching[False]["primary"][layer])
            union, extra = union_pairs(matching[False][name][layer], primary)
            assert pairs_of(matching[True][name][layer]) == pairs_of(union)
            added += sum(len(q) for q, _ in extra)
    assert added > 0  # some one-to-one pair was no one-to-many positive: the merge added it


# --- parameters (Tables 1, 2, 6) ----------------------------------------------------------------
def count(model):
    return sum(p.numel() for p in model.parameters())


def test_training_parameters_are_the_baseline_plus_the_lora_branches():
    baseline = count(build(tiny_cfg(BASE_TINY)))
    assert count(build(tiny_cfg())) == baseline + lora_param_count(NUM_LAYERS, D_MODEL, D_FFN, RANK, 3)
    assert lora_param_count(NUM_LAYERS, D_MODEL, D_FFN, RANK, 3) == 3 * NUM_LAYERS * 2 * RANK * (D_MODEL + D_FFN)
    naive = tiny_cfg()
    naive.model.variants.naive = True
    assert count(build(naive)) == baseline + 3 * NUM_LAYERS * (2 * D_MODEL * D_FFN + D_MODEL + D_FFN)
    # The paper's columns (millions; d 256, d_ffn 2048, 6 layers, baseline 47.3 / 47.5 for "++").
    per_branch = lora_param_count(6, 256, 2048, 32) / 1e6
    assert per_branch == pytest.approx(0.885, abs=1e-3)
    for n_aux, table in ((1, 48.1), (2, 49.0), (3, 49.9)):  # Tables 2, 6, 7
        assert 47.3 + n_aux * per_branch == pytest.approx(table, abs=0.1)
    assert 47.5 + lora_param_count(6, 256, 2048, 48, 3) / 1e6 == pytest.approx(51.4, abs=0.1)  # Table 2, "++" N_aux 3
    naive_branch = 6 * (2 * 256 * 2048 + 256 + 2048) / 1e6
    for n_aux, table in ((1, 53.6), (2, 59.9), (3, 66.2), (5, 78.8)):  # Table 1, Fig. 1(c)
        assert 47.3 + n_aux * naive_branch == pytest.approx(table, abs=0.1)


# --- inference: main branch only, strips to the baseline ----------------------------------------
def load_strip_tool():
    spec = importlib.util.spec_from_file_location("strip_training_parts", REPO / "tools" / "strip_training_parts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_runs_the_main_branch_only_and_equals_the_stripped_baseline(tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg()
    model = build(cfg).train()
    optimizer = build_adamw(model, lr=1e-3)
    sum(model(synthetic_batch()).values()).backward()
    optimizer.step()  # B != 0 from here on: the branches now differ from the main FFN
    assert model.variants["aux0"].layer_variants[0].lora_b1.abs().sum() > 0
    model.eval()

    def fail(*args, **kwargs):
        raise AssertionError("a LoRA branch ran at inference")

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(LoRAFFNBranch, "feed_forward", fail)
        results = model(synthetic_batch(seed=1))

    torch.save({"model": model.state_dict(), "iteration": 1}, tmp_path / "lora.pth")
    argv = [str(tmp_path / "lora.pth"), str(tmp_path / "plain.pth"), "--check-config", str(BASE_TINY), *TINY]
    state = load_strip_tool().main(argv)  # tools/strip_training_parts.py: loads strictly into the baseline
    assert "loads strictly into DeformableDETR" in capsys.readouterr().out
    assert state.keys() == strip_training_parts(model.state_dict()).keys()
    assert not any(k.startswith("variants.") for k in state)
    baseline = build(tiny_cfg(BASE_TINY), seed=1)
    baseline.load_state_dict(torch.load(tmp_path / "plain.pth")["model"], strict=True)
    with torch.no_grad():
        assert_same_predictions(results, baseline.eval()(synthetic_batch(seed=1)))


def test_an_auxiliary_branch_can_be_evaluated_with_nms(monkeypatch):
    """Table 5 "Aux. w. NMS": ``eval_variant`` / ``eval_nms_threshold`` of the core meta-architecture. With
    B = 0 the branch predicts what the main branch predicts; with class-wise NMS at IoU 0.5 the branch's
    last-layer predictions (replaced by ``nms_case``'s hand-made duplicates) give exactly the expected
    survivors in score order, each with its own query's box in original image coordinates."""
    cfg = tiny_cfg()
    cfg.model.eval_variant = "aux0"
    model = build(cfg).eval()
    batch = synthetic_batch(seed=2)
    with torch.no_grad():
        aux = model(batch)
        model.eval_variant = None
        primary = model(batch)
    assert_same_predictions(aux, primary)  # B = 0: the branch predicts what the main branch predicts

    logits, boxes, expected = nms_case(20, 4)
    decode = model.transformer.decode

    def decode_with_hand_made_aux0(*args, **kwargs):
        out = decode(*args, **kwargs)
        assert list(out.variants) == ["aux0"]  # only the evaluated branch runs
        last = out.variants["aux0"][-1]
        last.logits, last.boxes = logits, boxes
        return out

    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(model.transformer, "decode", decode_with_hand_made_aux0)
        model.eval_variant, model.eval_nms_threshold, model.select_box_nums_for_evaluation = "aux0", 0.5, 4
        for x in batch:
            x["height"], x["width"] = 2 * x["image"].shape[1], 2 * x["image"].shape[2]
        outputs = model(batch)
    for i, (output, x) in enumerate(zip(outputs, batch)):
        instances = output["instances"]
        queries, classes = zip(*expected[i])
        assert instances.image_size == (x["height"], x["width"])
        assert instances.pred_classes.tolist() == list(classes)
        torch.testing.assert_close(instances.scores, logits[i, list(queries), list(classes)].sigmoid(), rtol=0, atol=1e-6)
        cx, cy, w, h = boxes[i, list(queries)].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([x["width"], x["height"]] * 2)
        torch.testing.assert_close(instances.pred_boxes.tensor, xyxy, rtol=0, atol=1e-4)

    model.eval_nms_threshold, model.select_box_nums_for_evaluation = None, 100
    with torch.no_grad():
        for variant in model.variants.values():
            for branch in variant.layer_variants:
                branch.reset_parameters("normal")
        assert not torch.equal(predictions(model(batch))[0][1], predictions(primary)[0][1])
    cfg.model.eval_variant = "aux9"
    with pytest.raises(ValueError, match="aux9"):
        build(cfg)


# --- configs --------------------------------------------------------------------------------------
EXPERIMENTS = sorted(p for p in glob.glob(str(PROJECT_CONFIGS / "**" / "*.py"), recursive=True)
                     if "/models/" not in p and not Path(p).stem.startswith("baseline_"))
EXPECTED_BRANCHES = {  # file stem: (ks, rank, naive)
    "lora_deformable_detr_r50_12ep": ([2, 4, 6], 32, False),
    "lora_deformable_detr_plusplus_r50_12ep": ([2, 4, 6], 48, False),
    "lora_detr_shapes_tiny": ([2, 4, 6], 32, False),
    "lora_dino_r50_4scale_12ep": ([2, 4, 6], 48, False),
    "lora_dino_hybrid_r50_4scale_12ep": ([6], 48, False),  # Table 2's "1+1": the hybrid branch + one LoRA branch
    "lora_dino_shapes_tiny": ([2, 4, 6], 32, False),
    "naux1": (list(TABLE4_DIVERSE_K[1]), 32, False),
    "naux2": (list(TABLE4_DIVERSE_K[2]), 32, False),
    "naux5": (list(TABLE4_DIVERSE_K[5]), 32, False),
    "identical_k": ([6, 6, 6], 32, True),
    "diverse_tau": ([6, 6, 6], 32, True),
    "diverse_alpha": ([6, 6, 6], 32, True),
    "naive_ffn": ([6], 32, True),
    "naive_ffn_naux3": ([2, 4, 6], 32, True),
    "rank16": ([6], 16, False),
    "rank32": ([6], 32, False),
    "rank64": ([6], 64, False),
    "focal": ([2, 4, 6], 32, False),
    "aux_nms_eval": ([6], 32, False),
}
FULLY_INSTANTIATED = {"lora_deformable_detr_r50_12ep", "lora_deformable_detr_plusplus_r50_12ep", "aux_nms_eval"}


SHAPES = {"lora_detr_shapes_tiny", "lora_detr_shapes_tiny_vfl_plus_baseline", "lora_dino_shapes_tiny"}
# With DINO's denoising queries the branches' losses are x0.5 (Sec. 4, "Training"); the 900-query
# recipe merges the o2o positives into each branch's.
WITH_DENOISING = {"lora_dino_r50_4scale_12ep", "lora_dino_hybrid_r50_4scale_12ep", "lora_dino_shapes_tiny"}
MERGE_O2O = {"lora_deformable_detr_plusplus_r50_12ep", "lora_dino_r50_4scale_12ep", "lora_dino_hybrid_r50_4scale_12ep"}
# The authors' LR factors (docs/authors_code_facts.md#lora-detr-optimiser): the sampling offsets train at
# the full LR and only the box head is at x0.1; the COCO backbone stays at x0.1, the shapes backbone trains from scratch at the full LR.
COCO_LR_FACTORS, SHAPES_LR_FACTORS = {"backbone": 0.1, "box_heads": 0.1}, {"box_heads": 0.1}
# Table 1's setting (#27 item 12): naive FFN branches, focal loss, the box head at the full LR (Table 7's
# "+ Architecture (b) -> (c)" row, before the box-head LR and the assignment-quality loss).
TABLE1_SETTING = {"naive_ffn_naux3", "identical_k", "diverse_tau", "diverse_alpha"}


def branch_criterion(variant):
    """The branch's ``SetCriterion`` (inside the 900-query recipe's ``O2OMergedCriterion``)."""
    criterion = variant.criterion
    return criterion.criterion if isinstance(criterion, O2OMergedCriterion) else criterion


def test_the_300_query_coco_config_is_the_papers_47_3m_model():
    """#27 item 5: Table 2's 300-query model has FFN 2048 (47.3M; 47.47M here with the published
    two-stage's 80-wide proposal head), each rank-32 branch adds 0.885M; the baseline config is the
    same model without branches."""
    lora = instantiate(LazyConfig.load(str(PROJECT_CONFIGS / "lora_deformable_detr_r50_12ep.py")).model)
    baseline = instantiate(LazyConfig.load(str(PROJECT_CONFIGS / "baseline_two_stage_r50_12ep_ffn2048.py")).model)
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    assert count(baseline) == pytest.approx(47.3, abs=0.2)
    assert count(lora) - count(baseline) == pytest.approx(3 * 0.885, abs=0.01)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: Path(p).stem)
def test_config_loads_and_instantiates(path):
    stem = Path(path).stem
    cfg = LazyConfig.load(path)
    assert set(cfg) == {"dataloader", "lr_multiplier", "model", "optimizer", "train"}
    expected_factors = SHAPES_LR_FACTORS if stem in SHAPES else COCO_LR_FACTORS
    if stem in TABLE1_SETTING:
        expected_factors = {"backbone": 0.1}
    assert dict(cfg.optimizer.lr_factors) == expected_factors
    assert cfg.train.clip_grad_norm == 0.1
    assert cfg.train.output_dir.endswith(stem)
    criterion = instantiate(cfg.model.criterion)
    if stem == "focal" or stem in TABLE1_SETTING:
        assert isinstance(criterion.class_loss, FocalLoss) and criterion.loss_weights["class"] == 2.0
        assert cfg.model.variants.class_loss == "focal"
    else:
        assert isinstance(criterion.class_loss, VarifocalPlusLoss) and criterion.class_loss.quality == "iou"
        assert criterion.class_loss.scale == 0.25  # the authors' VFL+ x 0.25
    # "The encoder loss is focal 2/5/2 with the encoder-proposal matching of MS-DETR"
    enc = instantiate(cfg.model.enc_criterion)
    assert isinstance(enc.class_loss, FocalLoss) and enc.loss_weights == {"class": 2.0, "bbox": 5.0, "giou": 2.0}
    assert (enc.matcher.cost_class, enc.matcher.cost_bbox, enc.matcher.cost_giou) == (2.0, 5.0, 2.0)
    if stem == "lora_detr_shapes_tiny_vfl_plus_baseline":  # N_aux = 0: the LoRA config without its branches
        assert cfg.model.variants is None and not build(tiny_cfg(path)).variants
        return
    ks, rank, naive = EXPECTED_BRANCHES[stem]
    assert (list(cfg.model.variants.ks), cfg.model.variants.rank, cfg.model.variants.naive) == (ks, rank, naive)
    assert cfg.model.variants.vfl_scale == 0.25 and cfg.model.variants.detach_reference is True
    assert cfg.model.variants.merge_o2o_positives == (stem in MERGE_O2O)
    variants = instantiate(cfg.model.variants)
    assert len(variants) == len(ks)
    scale = 0.5 if stem in WITH_DENOISING else 1.0
    assert all(variant.loss_scale == pytest.approx(scale / len(ks)) for variant in variants.values())
    assert ("dn" in (cfg.model.get("group_sources") or {})) == (stem in WITH_DENOISING)
    branch_type = OwnFFNVariant if naive else LoRAFFNBranch
    assert all(isinstance(b, branch_type) for variant in variants.values() for b in variant.layer_variants)
    assert all(variant.detach_reference for variant in variants.values())
    if stem == "focal" or stem in TABLE1_SETTING:
        assert all(isinstance(branch_criterion(variant).class_loss, FocalLoss) for variant in variants.values())
    else:
        assert all(branch_criterion(variant).class_loss.scale == 0.25 for variant in variants.values())
    if stem in FULLY_INSTANTIATED:
        model = instantiate(cfg.model)
        assert isinstance(model, DeformableDETR) and model.eval_variant == cfg.model.get("eval_variant")
        cfg.optimizer.model = model
        assert_lr_factors(model, instantiate(cfg.optimizer), cfg.optimizer.lr, backbone=0.1)
    if stem == "lora_detr_shapes_tiny":
        cfg = tiny_cfg()
        cfg.optimizer.model = model = instantiate(cfg.model)
        assert_lr_factors(model, instantiate(cfg.optimizer), cfg.optimizer.lr, backbone=1.0)


def assert_lr_factors(model, optimizer, lr, backbone):
    """Box heads at x0.1, sampling offsets and LoRA at the full LR, the (trained) backbone at ``backbone``;
    every trainable parameter in one group."""
    groups = {name: g["lr"] for g in optimizer.param_groups for name in g["names"]}
    assert groups.keys() == {name for name, p in model.named_parameters() if p.requires_grad}
    factors = {name: value / lr for name, value in groups.items()}
    offsets = [name for name in factors if "sampling_offsets" in name]
    assert offsets and all(factors[name] == pytest.approx(1.0) for name in offsets)
    assert factors["transformer.decoder.box_heads.0.layers.0.weight"] == pytest.approx(0.1)
    assert factors["variants.aux0.layer_variants.0.lora_a1"] == pytest.approx(1.0)
    trained_backbone = [name for name in factors if name.startswith("backbone.")]
    assert trained_backbone and all(factors[name] == pytest.approx(backbone) for name in trained_backbone)
    others = [name for name in factors if "box_heads" not in name and not name.startswith("backbone.")]
    assert all(factors[name] == pytest.approx(1.0) for name in others)


@pytest.mark.parametrize("stem, queries, rank", [("lora_deformable_detr_r50_12ep", 300, 32), ("lora_deformable_detr_plusplus_r50_12ep", 900, 48)])
def test_coco_configs_have_the_papers_values(stem, queries, rank):
    """docs/authors_code_facts.md#lora-detr against the COCO configs and what they instantiate: AdamW lr 2e-4,
    weight decay 1e-4, the backbone and the box-regression heads at 2e-5, everything else (sampling
    offsets, LoRA) at 2e-4; grad clip 0.1; 12 epochs of 7500 iterations at batch 16 with the LR x0.1
    from epoch 11; 300 queries with rank 32, 900 with rank 48; three branches k 2/4/6 with tau 0.4,
    class weight 0.3, positives capped at 0.25 x queries, LoRA scaling 1, VFL+ gamma 1.5, losses 2/5/2
    averaged over the branches (x 1/3); the o2o branch Hungarian 2/5/2 with VFL+ (s = IoU) 1/5/2."""
    cfg = LazyConfig.load(str(PROJECT_CONFIGS / f"{stem}.py"))
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.train.clip_grad_norm) == (2e-4, 1e-4, 0.1)
    assert cfg.dataloader.train.total_batch_size == 16 and cfg.train.max_iter == 90000
    scheduler = cfg.lr_multiplier.scheduler
    assert (scheduler.num_updates, list(scheduler.milestones), list(scheduler["values"])) == (90000, [82500], [1.0, 0.1])
    assert cfg.model.transformer.num_queries == queries and cfg.model.variants.rank == rank
    model = build(tiny_cfg(PROJECT_CONFIGS / f"{stem}.py"))  # (TINY sizes)
    cfg.optimizer.model = model
    lrs = {name: g["lr"] for g in instantiate(cfg.optimizer).param_groups for name in g["names"]}
    for name, lr in lrs.items():
        slow = name.startswith("backbone.") or name.startswith("transformer.decoder.box_heads.")
        assert lr == pytest.approx(2e-5 if slow else 2e-4), name
    assert any("sampling_offsets" in n for n in lrs) and any(".lora_a1" in n for n in lrs)
    primary = model.criterion
    assert (primary.matcher.cost_class, primary.matcher.cost_bbox, primary.matcher.cost_giou) == (2.0, 5.0, 2.0)
    assert isinstance(primary.class_loss, VarifocalPlusLoss)
    assert (primary.loss_weights, primary.class_loss.quality, primary.class_loss.gamma) == (
        {"class": 1.0, "bbox": 5.0, "giou": 2.0}, "iou", 1.5)
    assert list(model.variants) == ["aux0", "aux1", "aux2"]
    for variant, k in zip(model.variants.values(), (2, 4, 6)):
        criterion, matcher = branch_criterion(variant), variant.criterion.matcher
        assert (matcher.topk, matcher.threshold, matcher.class_weight, matcher.max_positive_ratio, matcher.keep_top1) == (k, 0.4, 0.3, 0.25, True)
        assert isinstance(criterion.class_loss, VarifocalPlusLoss)
        assert (criterion.loss_weights, criterion.class_loss.quality, criterion.class_loss.gamma) == (
            {"class": 2.0, "bbox": 5.0, "giou": 2.0}, "matching_score", 1.5)
        assert variant.loss_scale == pytest.approx(1 / 3)
        assert all(branch.rank == rank and branch.scaling == 1.0 for branch in variant.layer_variants)
