"""The shared Deformable-DETR built from the real model configs (sizes made tiny): each published
variant's query generation, training losses and gradients, inference outputs, look-forward-twice,
shared heads / layers, and the published initialisation."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from detr_plus.layers import box_sine_embedding
from detr_plus.layers.box_ops import inverse_sigmoid
from detr_plus.modeling import DecoderQueries, EncoderState
from model_utils import (
    IMAGE_SIZES,
    NUM_CLASSES,
    D_MODEL,
    CallCounter,
    assert_finite_grads,
    build,
    build_tiny_model,
    random_queries,
    synthetic_batch,
    targets_of,
    tiny_model_config,
)

DEC_LAYERS = 2
VARIANTS = ("plain", "refine", "two_stage", "plusplus", "dab")
TWO_STAGE = ("two_stage", "plusplus")


@pytest.fixture(scope="module")
def models():
    return {name: build_tiny_model(name, dec_layers=DEC_LAYERS, num_queries=20) for name in VARIANTS}


def expected_loss_keys(num_layers, two_stage=True):
    keys = set()
    for term in ("class", "bbox", "giou"):
        keys.add(f"loss_{term}")
        keys.update(f"loss_{term}_{i}" for i in range(num_layers - 1))
        if two_stage:
            keys.add(f"loss_{term}_enc")
    return keys


def test_configs_are_the_published_variants(models):
    """Each config file is the variant its name says (README "Baselines")."""
    t = {name: m.transformer for name, m in models.items()}
    expected = {  # query_init, query_position, box_refine, look_forward_twice, shared heads, class-agnostic encoder
        "plain": ("embedding", "static", False, False, True, False),
        "refine": ("embedding", "static", True, False, False, False),
        "two_stage": ("proposals", "static", True, False, False, True),
        "plusplus": ("mixed", "static", True, True, False, True),
        "dab": ("anchors", "box_sine", True, False, False, False),
    }
    for name, (init, position, refine, lft, shared, agnostic) in expected.items():
        d = t[name].decoder
        assert (t[name].query_init, d.query_position, d.box_refine, d.look_forward_twice) == (init, position, refine, lft), name
        assert (d.class_heads[0] is d.class_heads[1]) == shared and (d.box_heads[0] is d.box_heads[1]) == shared, name
        assert t[name].two_stage == (name in TWO_STAGE) and hasattr(t[name], "enc_class_head") == (name in TWO_STAGE)
        if name in TWO_STAGE:
            assert t[name].enc_class_agnostic == agnostic  # the published two-stage: C-wide, the ++: 1 (H-DETR)
            assert t[name].enc_class_head.out_features == (NUM_CLASSES if name == "two_stage" else 1)
            assert t[name].enc_loss_tokens == "all"
        assert hasattr(d, "ref_point_head") == (position == "box_sine"), name
        assert t[name].num_queries == 20 and len(d.layers) == DEC_LAYERS and len(t[name].encoder.layers) == 1
        assert d.class_heads[0].out_features == NUM_CLASSES
    assert t["plain"].reference_points.out_features == 2 and t["plain"].query_embedding.weight.shape == (20, 2 * D_MODEL)
    assert hasattr(t["plusplus"], "query_content") and hasattr(t["plusplus"], "proposal_embedding")
    assert not hasattr(t["two_stage"], "query_content") and hasattr(t["two_stage"], "proposal_embedding")
    assert t["plusplus"].decoder.layers[0].ffn.ffn.linear1.out_features == 2 * D_MODEL  # tiny: 2 x d (COCO: 2048)
    with pytest.raises(ValueError, match="query_position"):
        build_tiny_model("plain", decoder=dict(query_position="box_sine"))
    with pytest.raises(ValueError, match="query_position"):
        build_tiny_model("dab", decoder=dict(query_position="static"))


def test_published_single_stage_queries_and_static_positions(models):
    """Zhu et al. Sec. 4.1 / A.4: query embedding = [position | content], reference points =
    sigmoid(Linear(position)) (2-d), the same positional part at every decoder layer, and boxes =
    sigmoid(head + [inverse_sigmoid(point), 0, 0])."""
    model = models["plain"]
    model.eval()
    t = model.transformer
    batch = synthetic_batch(with_instances=False)
    calls = []
    hooks = [layer.cross_attn.register_forward_hook(lambda m, args, out: calls.append(args[1])) for layer in t.decoder.layers]
    try:
        with torch.no_grad():
            _, state, selection = model.encode_and_select(batch)
            out = t.decode(selection.queries, state)
    finally:
        for h in hooks:
            h.remove()
    position, content = t.query_embedding.weight[:, :D_MODEL], t.query_embedding.weight[:, D_MODEL:]
    q = selection.queries
    torch.testing.assert_close(q.content[1], content, rtol=0, atol=0)
    torch.testing.assert_close(q.position[0], position, rtol=0, atol=0)
    reference = (position @ t.reference_points.weight.T + t.reference_points.bias).sigmoid()
    torch.testing.assert_close(q.reference[0], reference.detach(), rtol=0, atol=1e-6)
    assert q.reference.shape == (2, 20, 2) and selection.encoder_predictions is None
    for context in calls:  # static: the query embedding's positional part, unchanged by the layers
        torch.testing.assert_close(context.query_pos, q.position, rtol=0, atol=0)
        torch.testing.assert_close(context.reference_points, q.reference[:, :, None] * state.valid_ratios[:, None], rtol=0, atol=0)
    head = t.decoder.box_heads[0]
    for layer in out.layers:
        offset = torch.cat([inverse_sigmoid(q.reference), torch.zeros(2, 20, 2)], -1)
        with torch.no_grad():
            torch.testing.assert_close(layer.boxes, (head(layer.hidden) + offset).sigmoid(), rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.reference, q.reference)


def test_published_two_stage_queries(models):
    """Zhu et al. Sec. A.4: the top-k by the proposal score (the first logit); content and static position
    are the two halves of LayerNorm(Linear(sine(top-k boxes))); the encoder loss reads every token."""
    model = models["two_stage"]
    model.eval()
    t = model.transformer
    with torch.no_grad():
        _, state, selection = model.encode_and_select(synthetic_batch(with_instances=False))
        proposal_logits, memory, valid = t.encoder_proposals(state)
        enc_out = t.enc_output(memory)
        scores = t.enc_class_head(enc_out)[..., 0].masked_fill(~valid, -math.inf)
        topk = scores.topk(20, dim=1).indices
        boxes = (t.enc_box_head(enc_out) + proposal_logits).sigmoid()
        picked = boxes.gather(1, topk[..., None].expand(-1, -1, 4))
        embedded = t.proposal_embedding(box_sine_embedding(picked, D_MODEL // 2))
    assert torch.equal(selection.topk_indices, topk)
    q = selection.queries
    torch.testing.assert_close(q.reference, picked, rtol=0, atol=0)
    torch.testing.assert_close(q.position, embedded[..., :D_MODEL], rtol=0, atol=0)
    torch.testing.assert_close(q.content, embedded[..., D_MODEL:], rtol=0, atol=0)
    enc = selection.encoder_predictions
    assert enc["logits"].shape == (2, memory.shape[1], NUM_CLASSES) and torch.equal(enc["valid"], valid)  # C wide (issue #26)
    torch.testing.assert_close(enc["boxes"][valid], boxes[valid])
    # ++ (mixed): learned content queries, the same proposals' boxes and positional part.
    pp = models["plusplus"]
    pp.eval()
    with torch.no_grad():
        _, state, sel = pp.encode_and_select(synthetic_batch(with_instances=False))
        embedded = pp.transformer.proposal_embedding(box_sine_embedding(sel.queries.reference, D_MODEL // 2))
    torch.testing.assert_close(sel.queries.content[0], pp.transformer.query_content.weight, rtol=0, atol=0)
    torch.testing.assert_close(sel.queries.position, embedded[..., :D_MODEL], rtol=0, atol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_training_losses_and_gradients(models, name):
    model = models[name]
    model.train()
    model.zero_grad(set_to_none=True)
    batch = synthetic_batch()
    assert len(batch[1]["instances"]) == 0  # one image without any box
    losses = model(batch)
    assert set(losses) == expected_loss_keys(DEC_LAYERS, name in TWO_STAGE)
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        assert value > 0, key
    sum(losses.values()).backward()
    # level_embed only enters through the encoder's sampling-offset / attention-weight projections,
    # whose weights start at zero (paper init), so its gradient is exactly zero at step 0.
    t = model.transformer
    assert t.level_embed.grad is not None and torch.isfinite(t.level_embed.grad).all()
    assert_finite_grads(model, name)  # every parameter is used and gets a finite gradient
    for what in ("backbone", "neck"):
        assert_finite_grads(getattr(model, what), what)
    for what in ("encoder", "decoder", "query_embedding", "reference_points", "query_content", "anchor_boxes",
                 "proposal_embedding", "enc_class_head", "enc_box_head", "enc_output"):
        if hasattr(t, what):
            assert_finite_grads(getattr(t, what), what)
    model.zero_grad(set_to_none=True)


def hand_losses(logits, boxes, gt_boxes, gt_labels, num_boxes, alpha=0.25, gamma=2.0, weights=(2.0, 5.0, 2.0)):
    """Deformable DETR's criterion for ONE image written out in float64 numpy: the assignment minimising
    2 focal cost + 5 L1 - 2 GIoU by brute force over every injective GT -> query map, then the focal
    loss over all queries x classes, L1 and 1 - GIoU of the matched pairs, each / ``num_boxes`` and
    weighted 2 / 5 / 2. (Q, C) logits, (Q, 4) and (n, 4) cxcywh boxes, n labels."""
    import itertools

    x, b, g = (np.asarray(t, dtype=np.float64) for t in (logits, boxes, gt_boxes))
    p = 1 / (1 + np.exp(-x))

    def xyxy(c):
        return np.stack([c[..., 0] - c[..., 2] / 2, c[..., 1] - c[..., 3] / 2, c[..., 0] + c[..., 2] / 2, c[..., 1] + c[..., 3] / 2], -1)

    def giou(u, v):  # (4,), (4,) xyxy
        inter = max(0.0, min(u[2], v[2]) - max(u[0], v[0])) * max(0.0, min(u[3], v[3]) - max(u[1], v[1]))
        union = (u[2] - u[0]) * (u[3] - u[1]) + (v[2] - v[0]) * (v[3] - v[1]) - inter
        hull = (max(u[2], v[2]) - min(u[0], v[0])) * (max(u[3], v[3]) - min(u[1], v[1]))
        return inter / union - (hull - union) / hull

    bx, gx = xyxy(b), xyxy(g)
    n = len(gt_labels)
    cost = np.zeros((len(b), n))
    for q in range(len(b)):
        for j, label in enumerate(gt_labels):
            pq = p[q, label]
            focal_cost = alpha * (1 - pq) ** gamma * -np.log(pq) - (1 - alpha) * pq ** gamma * -np.log(1 - pq)
            cost[q, j] = 2 * focal_cost + 5 * np.abs(b[q] - g[j]).sum() - 2 * giou(bx[q], gx[j])
    best = min(itertools.permutations(range(len(b)), n), key=lambda qs: sum(cost[q, j] for j, q in enumerate(qs)))
    target = np.zeros_like(x)
    for j, q in enumerate(best):
        target[q, gt_labels[j]] = 1.0
    ce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    focal = ((alpha * target + (1 - alpha) * (1 - target)) * (1 - p_t) ** gamma * ce).sum()
    l1 = sum(np.abs(b[q] - g[j]).sum() for j, q in enumerate(best))
    giou_loss = sum(1 - giou(bx[q], gx[j]) for j, q in enumerate(best))
    return {"loss_class": weights[0] * focal / num_boxes, "loss_bbox": weights[1] * l1 / num_boxes,
            "loss_giou": weights[2] * giou_loss / num_boxes}, list(best)


@pytest.mark.parametrize("name", ["refine", "plusplus"])
def test_loss_dict_values_match_criterion_per_layer(models, name):
    """``loss_*_{i}`` is the criterion on layer i, ``loss_*`` on the last layer, ``loss_*_enc`` on the
    encoder predictions (class-agnostic targets for the ++'s one-score head) times
    ``enc_loss_weight``; one image has no GT. The matching indices come back per layer. Every decoder
    layer's three losses (and the ++'s class-agnostic encoder losses on its valid tokens) also equal
    ``hand_losses`` (brute-force matching, focal / L1 / GIoU written out) on those predictions, with the
    GT boxes normalised by hand from their pixels."""
    model = models[name]
    model.eval()  # no dropout: the same decoder output below and in the loss dict
    batch = synthetic_batch()
    with torch.no_grad():
        losses, matching = model.training_losses(batch)
        _, state, selection = model.encode_and_select(batch)
        out = model.transformer.decode(selection.queries, state)
        targets = targets_of(model, batch)
        assert [len(t["labels"]) for t in targets] == [2, 0]
        num_boxes = 2.0
        assert len(matching["primary"]) == DEC_LAYERS
        (h, w), gt_labels = IMAGE_SIZES[0], [0, 2]
        gt_boxes = [[22.0 / w, 18.0 / h, 36.0 / w, 24.0 / h], [52.5 / w, 40.0 / h, 45.0 / w, 40.0 / h]]  # 4,6,40,30 and 30,20,75,60 px
        for i, layer in enumerate(out.layers):
            suffix = "" if i == DEC_LAYERS - 1 else f"_{i}"
            # Image 1 has no GT: its queries add focal terms with all-zero targets.
            by_hand, pairs = hand_losses(layer.logits[0], layer.boxes[0], gt_boxes, gt_labels, num_boxes)
            no_gt = hand_losses(layer.logits[1], layer.boxes[1], np.zeros((0, 4)), [], num_boxes)[0]
            for k in by_hand:
                assert losses[k + suffix].item() == pytest.approx(by_hand[k] + no_gt[k], rel=1e-4, abs=1e-6), (k + suffix)
            assert sorted(zip(matching["primary"][i][0][0].tolist(), matching["primary"][i][0][1].tolist())) == sorted(
                (q, j) for j, q in enumerate(pairs))
            expected, indices = model.criterion(layer.logits, layer.boxes, targets, num_boxes)
            for k, v in expected.items():
                torch.testing.assert_close(losses[k + suffix], v)
            for (q, g), (mq, mg) in zip(indices, matching["primary"][i]):
                assert torch.equal(q, mq) and torch.equal(g, mg)
        enc = selection.encoder_predictions
        if enc is not None:
            agnostic = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            expected, _ = model.criterion(enc["logits"], enc["boxes"], agnostic, num_boxes, valid=enc["valid"])
            for k, v in expected.items():
                torch.testing.assert_close(losses[k + "_enc"], v * model.enc_loss_weight)
            assert len(matching["enc"][0][0][0]) == 2  # both GT boxes matched to encoder tokens
            # By hand: one foreground class (both GTs labelled 0), only the valid tokens of each image.
            v0, v1 = enc["valid"][0], enc["valid"][1]
            by_hand = hand_losses(enc["logits"][0][v0], enc["boxes"][0][v0], gt_boxes, [0, 0], num_boxes)[0]
            no_gt = hand_losses(enc["logits"][1][v1], enc["boxes"][1][v1], np.zeros((0, 4)), [], num_boxes)[0]
            for k in by_hand:
                assert losses[k + "_enc"].item() == pytest.approx(model.enc_loss_weight * (by_hand[k] + no_gt[k]), rel=1e-4), k
        # GT boxes are normalized by the unpadded image size (cxcywh in [0, 1]).
        w, h = IMAGE_SIZES[0][1], IMAGE_SIZES[0][0]
        torch.testing.assert_close(targets[0]["boxes"][0], torch.tensor([22.0 / w, 18.0 / h, 36.0 / w, 24.0 / h]))
    # Box heads start with zero weights: the first layer predicts its reference boxes (a 2-d reference
    # point gives the centre, with width and height sigmoid(-2), the official single-stage / refine
    # init of the w / h bias, issue #26; the two-stage models' bias is 0).
    first = out.layers[0]
    if first.reference.shape[-1] == 4:
        torch.testing.assert_close(first.boxes, first.reference, atol=1e-4, rtol=0)
    else:
        wh = torch.full_like(first.reference, 1 / (1 + math.exp(2.0)))
        torch.testing.assert_close(first.boxes, torch.cat([first.reference, wh], -1), atol=1e-4, rtol=0)


def test_encoder_loss_weight_and_padded_tokens(models):
    """``enc_loss_weight`` scales only the encoder terms; encoder tokens outside the valid proposals
    are not supervised (changing their logits changes no loss)."""
    model = models["plusplus"]
    model.eval()
    batch = synthetic_batch()
    with torch.no_grad():
        base, _ = model.training_losses(batch)
        model.enc_loss_weight = 3.0
        try:
            tripled, _ = model.training_losses(batch)
        finally:
            model.enc_loss_weight = 1.0
    for k in ("loss_class_enc", "loss_bbox_enc", "loss_giou_enc"):
        torch.testing.assert_close(tripled[k], 3 * base[k])
    torch.testing.assert_close(tripled["loss_class"], base["loss_class"])
    _, state, selection = model.encode_and_select(batch)
    enc = selection.encoder_predictions
    assert (~enc["valid"]).any()  # the smaller image is padded
    targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets_of(model, batch)]
    with torch.no_grad():
        a, _ = model.criterion(enc["logits"], enc["boxes"], targets, 2.0, valid=enc["valid"])
        noisy = enc["logits"].masked_fill(~enc["valid"][..., None], 5.0)
        b, _ = model.criterion(noisy, enc["boxes"], targets, 2.0, valid=enc["valid"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


class CaptureLastLogits:
    """Forward hook on the decoder: the last decoder layer's logits of each call."""

    def __init__(self, decoder):
        self.logits = []
        self.handle = decoder.register_forward_hook(lambda m, args, out: self.logits.append(out.layers[-1].logits))


@pytest.mark.parametrize("name", ["plain", "plusplus"])
def test_inference_outputs(models, name):
    model = models[name]
    model.eval()
    k = 15
    model.select_box_nums_for_evaluation = k
    capture = CaptureLastLogits(model.transformer.decoder)
    try:
        with torch.no_grad():
            plain_size = model(synthetic_batch(with_instances=False))
            scaled = model(synthetic_batch(with_instances=False, size_scale=2))
    finally:
        model.select_box_nums_for_evaluation = 100
        capture.handle.remove()
    assert isinstance(scaled, list) and len(scaled) == 2 and set(scaled[0]) == {"instances"}
    logits = capture.logits[0]
    for i, (h, w) in enumerate(IMAGE_SIZES):
        a, b = plain_size[i]["instances"], scaled[i]["instances"]
        assert a.image_size == (h, w)  # no height/width in the input: the tensor's size
        assert b.image_size == (2 * h, 2 * w)  # the original size given in the input dict
        assert 0 < len(b) <= k and len(a) == len(b)
        assert torch.all(b.scores[:-1] >= b.scores[1:])
        assert b.pred_classes.dtype == torch.long and ((b.pred_classes >= 0) & (b.pred_classes < NUM_CLASSES)).all()
        torch.testing.assert_close(b.scores, a.scores)
        torch.testing.assert_close(b.pred_boxes.tensor, 2 * a.pred_boxes.tensor, rtol=1e-5, atol=1e-3)
        boxes = b.pred_boxes.tensor
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 2 * w).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 2 * h).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert boxes.abs().sum() > 0
        # Scores are the top sigmoid probabilities over queries x classes.
        top = logits[i].sigmoid().flatten().topk(k).values
        torch.testing.assert_close(b.scores, top[: len(b)])


def random_state(d_model, seed=0):
    """A random 4-level encoder state for (B=2) images, the second partly padded."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3], [2, 2], [1, 1]])
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    memory = torch.randn(2, int(shapes.prod(1).sum()), d_model, generator=gen)
    valid_ratios = torch.tensor([[1.0, 1.0], [0.8, 0.9]])[:, None].expand(-1, 4, -1)
    return EncoderState(memory, shapes, start, valid_ratios, torch.zeros(2, memory.shape[1], dtype=torch.bool))


def box_head_weights(decoder):
    return [head.layers[-1].weight for head in decoder.box_heads]


@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_reaches_one_refinement_back(look_forward_twice):
    """DINO Sec. 3.5 on a 4-layer decoder with learned anchors: layer i's box loss reaches box_heads[i]
    and, with look-forward-twice, box_heads[i - 1], never an earlier head; only layer 0's reaches
    the initial anchors. The switch changes the gradient path, not the values."""
    cfg = tiny_model_config("dab", dec_layers=4)
    cfg.transformer.decoder.look_forward_twice = look_forward_twice
    # The box paths only: the anchors' gradient through the first layer's sampling and positions
    # (the official decoder's, ``initial_reference_grad``) is tested in test_published_baselines.py.
    cfg.transformer.decoder.initial_reference_grad = False
    decoder = build(cfg.transformer.decoder, seed=1)
    with torch.no_grad():  # non-zero box heads, so layer outputs depend on the refinements
        for weight in box_head_weights(decoder):
            weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(2))
    content, reference = random_queries(2, 5, decoder.d_model)
    for i in range(4):
        anchors = reference.clone().requires_grad_()
        out = decoder(DecoderQueries(content, anchors), random_state(decoder.d_model))
        grads = torch.autograd.grad(out.layers[i].boxes.sum(), box_head_weights(decoder) + [anchors], allow_unused=True)
        reached = {j for j, g in enumerate(grads[:-1]) if g is not None and g.abs().sum() > 0}
        assert reached == ({i - 1, i} - {-1} if look_forward_twice else {i}), (i, reached)
        assert (grads[-1] is not None) == (i == 0), i
        if i:
            torch.testing.assert_close(out.layers[i].reference, out.layers[i - 1].boxes.detach(), rtol=0, atol=0)
    values = {}
    decoder.eval()  # no dropout: both passes compute the same values
    for lft in (True, False):
        decoder.look_forward_twice = lft
        with torch.no_grad():
            values[lft] = decoder(DecoderQueries(content, reference), random_state(decoder.d_model))
    for a, b in zip(values[True].layers, values[False].layers):
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0)


@pytest.mark.parametrize("detach_reference", [False, True])
def test_variant_detach_reference_cuts_the_look_forward_twice_path(detach_reference):
    """A variant branching from the primary state: with ``detach_reference`` (LoRA-DETR's public code)
    its layer-i box loss reaches box_heads[i] only, never the previous layer's refinement; without,
    look-forward-twice carries it to box_heads[i - 1] as for the primary queries. Values are equal."""
    from detr_plus.modeling import LayerVariant, OneToManyMatcher, SetCriterion, TrainingVariant

    cfg = tiny_model_config("dab", dec_layers=3)
    cfg.transformer.decoder.look_forward_twice = True
    decoder = build(cfg.transformer.decoder, seed=1)
    with torch.no_grad():
        for weight in box_head_weights(decoder):
            weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(2))
    criterion = SetCriterion(OneToManyMatcher(topk=2))
    variants = {name: TrainingVariant([LayerVariant() for _ in range(3)], criterion, detach_reference=flag)
              for name, flag in (("detached", True), ("attached", False))}
    content, reference = random_queries(2, 5, decoder.d_model)
    out = decoder(DecoderQueries(content, reference), random_state(decoder.d_model), variants=variants)
    name = "detached" if detach_reference else "attached"
    for i in (1, 2):
        variant_boxes = out.variants[name][i].boxes
        torch.testing.assert_close(variant_boxes, out.layers[i].boxes, rtol=0, atol=0)
        grads = torch.autograd.grad(variant_boxes.sum(), box_head_weights(decoder), allow_unused=True, retain_graph=True)
        reached = {j for j, g in enumerate(grads) if g is not None and g.abs().sum() > 0}
        assert reached == ({i} if detach_reference else {i - 1, i}), (i, reached)


def test_learned_anchors_variant(models):
    model = models["dab"]
    t = model.transformer
    assert not t.two_stage and t.anchor_boxes.weight.shape == (20, 4) and t.query_content.weight.shape == (20, 128)
    model.eval()
    with torch.no_grad():
        _, state, selection = model.encode_and_select(synthetic_batch(with_instances=False))
        results = model(synthetic_batch(with_instances=False))
    assert selection.encoder_predictions is None and selection.queries.position is None
    torch.testing.assert_close(selection.queries.reference, t.anchor_boxes.weight.sigmoid()[None].expand(2, -1, -1))
    assert [r["instances"].image_size for r in results] == IMAGE_SIZES


def test_shared_heads_and_shared_layers():
    """``share_heads`` gives one class/box head for every layer whatever ``box_refine`` says (DINO);
    ``share_layers`` one set of decoder-layer parameters for every stage (OD-DETR Appendix B)."""
    cfg = tiny_model_config("plusplus", dec_layers=3)
    separate = build(cfg, seed=0)
    cfg.transformer.decoder.update(share_heads=True, share_layers=True)
    shared = build(cfg, seed=0)
    d = shared.transformer.decoder
    assert d.box_refine and all(h is d.box_heads[0] for h in d.box_heads) and all(h is d.class_heads[0] for h in d.class_heads)
    assert all(layer is d.layers[0] for layer in d.layers)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    per_layer = count(separate.transformer.decoder.layers[0])
    per_heads = count(separate.transformer.decoder.box_heads[0]) + count(separate.transformer.decoder.class_heads[0])
    assert count(separate) - count(shared) == 2 * per_layer + 2 * per_heads
    shared.train()
    losses = shared(synthetic_batch())
    sum(losses.values()).backward()
    assert_finite_grads(shared, "shared")
    # The shared layer is called once per stage.
    with torch.no_grad(), CallCounter({"layer": d.layers[0]}) as calls:
        shared(synthetic_batch())
    assert calls.counts["layer"] == 3


def test_xavier_initialisation():
    """Published init: Xavier-uniform for the encoder / decoder layers' matrices, then the deformable
    attention's own (zero offsets weight, zero attention weights); heads keep theirs."""
    model = build_tiny_model("plusplus", seed=3)
    t = model.transformer
    linear = t.decoder.layers[0].ffn.ffn.linear1.weight
    bound = math.sqrt(6.0 / sum(linear.shape))
    assert linear.abs().max() <= bound and linear.abs().max() > 0.9 * bound
    assert linear.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    attn = t.decoder.layers[0].cross_attn.attn
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0 and torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.all(t.decoder.class_heads[0].bias == -4.59511985)
    off = tiny_model_config("plusplus")
    off.transformer.xavier_init = False
    kaiming = build(off, seed=3).transformer.decoder.layers[0].ffn.ffn.linear1.weight
    assert kaiming.abs().max() <= 1 / math.sqrt(linear.shape[1]) + 1e-6  # nn.Linear's default bound


def test_two_stage_needs_enough_encoder_positions(models):
    t = models["two_stage"].transformer
    shapes = torch.tensor([[2, 5]])
    state = EncoderState(torch.randn(1, 10, 128), shapes, torch.tensor([0]), torch.ones(1, 1, 2), torch.zeros(1, 10, dtype=torch.bool))
    t.num_queries = 11
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="num_queries"):
            t.select_queries(state)
        t.num_queries = 10
        with torch.no_grad():
            selection = t.select_queries(state)
    finally:
        t.num_queries = 20
    q = selection.queries
    assert q.content.shape == (1, 10, 128) and q.reference.shape == (1, 10, 4)
    assert selection.encoder_predictions["logits"].shape == (1, 10, NUM_CLASSES)  # the published C-wide proposal head


def test_parameter_sharing_is_counted_once_by_the_ema():
    """A shared-layer decoder has one tensor per shared parameter in the EMA (no double update)."""
    from detr_plus.engine.ema import ModelEMA

    cfg = tiny_model_config("plusplus", dec_layers=3)
    cfg.transformer.decoder.update(share_layers=True)
    model = build(cfg)
    ema = ModelEMA(model, decay=0.5)
    names = [n for n in ema.names if ".decoder.layers." in n]
    assert names and all(".decoder.layers.0." in n for n in names)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = ema.shadow[names[0]].clone()
    ema.update(model)
    torch.testing.assert_close(ema.shadow[names[0]], 0.5 * before + 0.5 * dict(model.named_parameters())[names[0]].detach())
    assert isinstance(ema.module.transformer.decoder.layers[2], nn.Module)
    assert ema.module.transformer.decoder.layers[2] is ema.module.transformer.decoder.layers[0]
    assert set(ema.state_dict()["shadow"]) >= {n.replace("layers.0.", "layers.2.") for n in names}


def test_queries_at_gives_new_queries_the_models_own_positions(models):
    """``transformer.queries_at(content, boxes, slots)``: box-sine models take the boxes (positions
    from them at every layer); two-stage static models the proposal embedding's positional half of
    the boxes; the published single-stage model the slots' static positions and the whole boxes as
    anchors (OD-DETR's "initial queries and anchors", #27 item 2)."""
    content, boxes = random_queries(2, 5, D_MODEL, seed=4)
    dab = models["dab"].transformer.queries_at(content, boxes)
    assert dab.position is None and torch.equal(dab.reference, boxes)
    t = models["two_stage"].transformer
    two = t.queries_at(content, boxes)
    with torch.no_grad():
        expected = t.proposal_embedding(box_sine_embedding(boxes, D_MODEL // 2))[..., :D_MODEL]
    torch.testing.assert_close(two.position, expected)
    torch.testing.assert_close(two.reference, boxes)
    t = models["plain"].transformer
    slots = torch.tensor([[0, 3, 3, 1, 2], [4, 4, 0, 1, 2]])
    one = t.queries_at(content, boxes, slots)
    torch.testing.assert_close(one.reference, boxes)
    torch.testing.assert_close(one.position, t.query_embedding.weight[slots, :D_MODEL])
    with pytest.raises(ValueError, match="slots"):
        t.queries_at(content, boxes)
