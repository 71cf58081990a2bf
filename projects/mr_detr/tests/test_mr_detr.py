"""Mr. DETR on the shared core: routes, gradient flow, instructive attention, inference cost,
checkpoint stripping (the core's ``tools/strip_training_parts.py``), route evaluation with NMS,
configs and the attention-map tool (issue #3, "What must be shown").

Models come from ``projects/mr_detr/configs/mr_detr_shapes_tiny.py`` made smaller (1 encoder and
2 decoder layers, 24 queries, 4 instruction tokens) on two synthetic 64-80 px images.
"""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from route_nms_case import nms_case  # tests/route_nms_case.py (pytest.ini: pythonpath = tests)
import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances

from detr_plus.engine.config import apply_overrides
from detr_plus.modeling import DeformableDETR, FocalLoss, QueryContext, SelfAttentionBlock, VarifocalPlusLoss, strip_training_parts
from detr_plus_projects.mr_detr.modeling import InstructiveSelfAttentionBranch, build_mr_detr_routes
from detr_plus_projects.mr_detr.tools import attention_map

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "projects" / "mr_detr" / "configs"
TINY = CONFIGS / "mr_detr_shapes_tiny.py"
BASELINE_TINY = REPO / "configs" / "shapes" / "deformable_detr_tiny.py"
NUM_LAYERS, NUM_TOKENS = 2, 4
SMALL = [
    "model.transformer.encoder.num_layers=1",
    f"model.transformer.decoder.num_layers={NUM_LAYERS}",
    "model.transformer.num_queries=24",
]
SMALL_MR = SMALL + [f"model.variants.num_instruction_tokens={NUM_TOKENS}"]
_spec = importlib.util.spec_from_file_location("strip_training_parts", REPO / "tools" / "strip_training_parts.py")
strip_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(strip_tool)


def small_cfg(*overrides, config=TINY):
    return apply_overrides(LazyConfig.load(str(config)), (SMALL_MR if config == TINY else SMALL) + list(overrides))


def build(*overrides, config=TINY, seed=0):
    torch.manual_seed(seed)
    return instantiate(small_cfg(*overrides, config=config).model)


def images(with_instances=True):
    """Two random images (64 x 80 and 80 x 64) with two and one boxes."""
    gen = torch.Generator().manual_seed(0)
    batch = []
    for (h, w), boxes, classes in [((64, 80), [[5, 8, 40, 50], [30, 10, 76, 40]], [0, 3]), ((80, 64), [[10, 20, 50, 70]], [1])]:
        x = {"image": torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)}
        if with_instances:
            x["instances"] = Instances((h, w), gt_boxes=Boxes(torch.tensor(boxes, dtype=torch.float32)), gt_classes=torch.tensor(classes))
        batch.append(x)
    return batch


def decode_all_routes(model, batch, routes=None):
    """The decoder output with every route of ``routes`` (default: the model's) run."""
    routes = model.variants if routes is None else routes
    with torch.no_grad():
        _, state, selection = model.encode_and_select(batch)
        starts = {name: s.queries for name, s in model.variant_selections(state, routes).items()}
        return model.transformer.decode(selection.queries, state, variants=routes, variant_queries=starts)


def with_moving_boxes(model):
    """``model`` with random last box-head layers: they start at zero (boxes = reference boxes),
    which would hide whose boxes a route's next layer starts from."""
    with torch.no_grad():
        for head in model.transformer.decoder.box_heads:
            head.layers[-1].weight.normal_(0, 0.05)
    return model


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.fixture(scope="module")
def train_losses(model):
    """One training step's loss dict (graph kept for the gradient test)."""
    model.train()
    return model(images())


def test_training_step_has_every_route_loss_on_every_layer(model, train_losses):
    expected = {f"loss_{t}{s}" for t in ("class", "bbox", "giou") for s in ["", "_enc"] + [f"_{i}" for i in range(NUM_LAYERS - 1)]}
    expected |= {f"{r}/loss_{t}_{i}" for r in ("route1", "route3") for t in ("class", "bbox", "giou") for i in range(NUM_LAYERS)}
    expected |= {f"route3/loss_{t}_enc" for t in ("class", "bbox", "giou")}  # Route-3's own selection; Route-1 has none
    assert set(train_losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in train_losses.values())
    assert model.enc_loss_weight == 3.0 and type(model) is DeformableDETR


def test_route_gradients(model, train_losses):
    """Route-1's FFNs learn only from o2m (Route-1) losses, Route-3's tokens/norms only from Route-3's,
    the shared decoder and heads from all three routes. Each route is its own pass through the
    decoder, so in no layer does the shared FFN get Route-1 gradient, nor the shared self-attention
    norm Route-3 gradient: those routes replace them everywhere."""
    losses = train_losses
    groups = {"primary": [k for k in losses if "/" not in k], "route1": [k for k in losses if k.startswith("route1/")],
              "route3": [k for k in losses if k.startswith("route3/")]}
    # everything after the backbone (its backward is the slow part and tells nothing here)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")])
    got = {}
    for group, keys in groups.items():
        grads = torch.autograd.grad(sum(losses[k] for k in keys), params, allow_unused=True, retain_graph=True)
        got[group] = {n for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}
    route1 = {n for n in names if n.startswith("variants.route1.")}
    route3 = {n for n in names if n.startswith("variants.route3.")}
    # linear1/2 w+b; tokens x2 + norm w+b, and Route-3's proposal heads (class w+b, 3-layer box MLP w+b)
    assert len(route1) == 4 * NUM_LAYERS and len(route3) == 4 * NUM_LAYERS + 8
    assert route1 <= got["route1"] and not route1 & (got["primary"] | got["route3"])
    # (the proposal box head's last layer starts at zero, so its first layers get no gradient yet)
    behind_zero_init = {n for n in route3 if ".box_head.layers.0." in n or ".box_head.layers.1." in n}
    assert route3 - behind_zero_init <= got["route3"] and not route3 & (got["primary"] | got["route1"])
    shared = {"neck.convs.0.0.weight"}
    for i in range(NUM_LAYERS):
        layer = f"transformer.decoder.layers.{i}."
        shared |= {layer + "self_attn.attn.in_proj_weight", layer + "cross_attn.attn.value_proj.weight",
                   layer + "cross_attn.norm.weight", layer + "ffn.norm.weight", f"transformer.decoder.class_heads.{i}.weight",
                   f"transformer.decoder.box_heads.{i}.layers.2.weight"}
    for group in groups:
        assert shared <= got[group], f"{group}: no gradient for {sorted(shared - got[group])}"
    for i in range(NUM_LAYERS):
        layer = f"transformer.decoder.layers.{i}."
        assert layer + "ffn.ffn.linear1.weight" in got["primary"] & got["route3"] - got["route1"]
        assert layer + "self_attn.norm.weight" in got["primary"] & got["route1"] - got["route3"]


@pytest.mark.parametrize("own_streams", [True, False])
def test_routes_carry_their_own_query_stream(own_streams):
    """Default: a route's layer input is its own previous output and refined boxes (all routes start
    from the shared queries and boxes); the ablation ``own_streams=False`` branches from the primary state."""
    own_selection = [] if own_streams else ["model.variants.route3_proposal_classes=null"]
    model = with_moving_boxes(build(f"model.variants.own_streams={own_streams}", *own_selection).eval())
    out = decode_all_routes(model, images(with_instances=False))
    primary = out.layers
    for name in ("route1", "route3"):
        route = out.variants[name]
        if name == "route1" or not own_streams:  # Route-3 has its own start (next test)
            assert torch.equal(route[0].reference, primary[0].reference)  # the shared start
        expected = route[0].boxes if own_streams else primary[0].boxes
        other = primary[0].boxes if own_streams else route[0].boxes
        torch.testing.assert_close(route[1].reference, expected, rtol=0, atol=0)
        assert (route[1].reference - other).abs().max() > 1e-4


def test_route3_starts_from_its_own_query_selection():
    """Route-3's first layer reads its own top-k proposals (its own heads: other boxes, hence other
    positions) with the shared learned content queries; Route-1 reads the primary selection. The
    instruction tokens are Xavier-uniform like the other matrices (|x| <= sqrt(6 / (T + d)))."""
    model = build().eval()
    route3 = model.variants["route3"]
    with torch.no_grad():  # proposal heads unlike the primary ones
        route3.query_selection.class_head.weight.normal_(0, 0.5)
    batch = images(with_instances=False)
    with torch.no_grad():
        _, state, primary = model.encode_and_select(batch)
        own = route3.query_selection(model.transformer, state)
    assert not torch.equal(own.topk_indices, primary.topk_indices)
    torch.testing.assert_close(own.queries.content, primary.queries.content, rtol=0, atol=0)
    assert not torch.allclose(own.queries.position, primary.queries.position)
    out = decode_all_routes(model, batch)
    torch.testing.assert_close(out.variants["route3"][0].reference, own.queries.reference, rtol=0, atol=0)
    torch.testing.assert_close(out.variants["route1"][0].reference, primary.queries.reference, rtol=0, atol=0)
    d_model = model.transformer.decoder.d_model
    bound = (6 / (NUM_TOKENS + d_model)) ** 0.5
    for branch in route3.layer_variants:
        for tokens in (branch.token_content, branch.token_pos):
            assert tokens.abs().max() <= bound and tokens.std() > bound / 3  # uniform on [-bound, bound]


def test_routes_together_predict_what_each_predicts_alone():
    """Decoding Route-1 and Route-3 together (one batched cross-attention per layer) changes no
    route's predictions, nor the primary route's: each equals its decode alone."""
    model = with_moving_boxes(build().eval())
    batch = images(with_instances=False)
    both = decode_all_routes(model, batch)
    for name in ("route1", "route3"):
        alone = decode_all_routes(model, batch, {name: model.variants[name]})
        for together, single in zip(both.variants[name] + both.layers, alone.variants[name] + alone.layers):
            for field in ("hidden", "logits", "boxes", "reference"):
                torch.testing.assert_close(getattr(together, field), getattr(single, field), rtol=0, atol=1e-5)


def test_instruction_tokens_change_route3_only(model):
    model.eval()
    batch = images(with_instances=False)
    before = decode_all_routes(model, batch)
    saved = {n: p.detach().clone() for n, p in model.variants.route3.named_parameters() if "token" in n}
    try:
        with torch.no_grad():
            for n, p in model.variants.route3.named_parameters():
                if "token" in n:
                    p.add_(torch.randn_like(p))
        after = decode_all_routes(model, batch)
    finally:
        model.variants.route3.load_state_dict(saved, strict=False)
    for i in range(NUM_LAYERS):
        assert torch.equal(before.layers[i].hidden, after.layers[i].hidden)  # Route-2 (primary)
        assert torch.equal(before.variants["route1"][i].hidden, after.variants["route1"][i].hidden)
        assert not torch.allclose(before.variants["route3"][i].hidden, after.variants["route3"][i].hidden)


def test_share_all_route_is_o2m_on_the_primary_predictions(model):
    """"Share All" (ablation row 2) has no parameters and predicts exactly the primary route's outputs."""
    routes = build_mr_detr_routes(NUM_LAYERS, 128, 512, routes=["share_all"])
    assert not list(routes["share_all"].parameters())
    model.eval()
    out = decode_all_routes(model, images(with_instances=False), routes)
    for primary, shared in zip(out.layers, out.variants["share_all"]):
        assert torch.equal(primary.logits, shared.logits) and torch.equal(primary.boxes, shared.boxes)


def test_eval_runs_only_the_primary_route_and_equals_the_stripped_baseline(model, tmp_path, monkeypatch):
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.variants.modules()]
    original_attend = InstructiveSelfAttentionBranch.attend
    monkeypatch.setattr(InstructiveSelfAttentionBranch, "attend", lambda *a, **k: calls.append(1) or original_attend(*a, **k))
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(images(with_instances=False))
    finally:
        for hook in hooks:
            hook.remove()
    assert not calls, "eval-mode forward ran auxiliary route modules"  # (test_eval_variant_with_nms: hooks do fire)

    torch.save({"model": model.state_dict(), "iteration": 3}, tmp_path / "mr.pth")
    strip_tool.main([str(tmp_path / "mr.pth"), str(tmp_path / "plain.pth")])
    stripped = torch.load(tmp_path / "plain.pth")["model"]
    assert stripped.keys() == strip_training_parts(model.state_dict()).keys()
    baseline = strip_tool.load_strictly(str(BASELINE_TINY), stripped, SMALL)
    assert type(baseline) is DeformableDETR and not baseline.variants
    baseline.eval()
    with torch.no_grad():
        expected = baseline(images(with_instances=False))
    for got, want in zip(outputs, expected):
        got, want = got["instances"], want["instances"]
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
        assert torch.equal(got.scores, want.scores) and torch.equal(got.pred_classes, want.pred_classes)


def test_eval_variant_with_nms(model, monkeypatch):
    """``eval_variant=route1`` with class-wise NMS at IoU 0.5: the route's last-layer predictions (replaced
    by ``nms_case``'s hand-made duplicates) give exactly the expected survivors, in score order, each
    with its own query's box in original image coordinates (inputs with height/width 2x the tensor's);
    Route-1's FFN runs once, in the last layer only for this route."""
    model.eval()
    logits, boxes, expected = nms_case(24, 4)
    decode = model.transformer.decode

    def decode_with_hand_made_route1(*args, **kwargs):
        out = decode(*args, **kwargs)
        last = out.variants["route1"][-1]
        last.logits, last.boxes = logits, boxes
        return out

    monkeypatch.setattr(model.transformer, "decode", decode_with_hand_made_route1)
    monkeypatch.setattr(model, "eval_variant", "route1")
    monkeypatch.setattr(model, "eval_nms_threshold", 0.5)
    monkeypatch.setattr(model, "select_box_nums_for_evaluation", 4)
    batch = images(with_instances=False)
    for x in batch:
        x["height"], x["width"] = 2 * x["image"].shape[1], 2 * x["image"].shape[2]
    calls = []
    hook = model.variants.route1.layer_variants[-1].ffn.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            outputs = model(batch)
    finally:
        hook.remove()
    assert calls == [1]
    for i, (output, x) in enumerate(zip(outputs, batch)):
        instances = output["instances"]
        queries, classes = zip(*expected[i])
        assert instances.image_size == (x["height"], x["width"])
        assert instances.pred_classes.tolist() == list(classes)
        torch.testing.assert_close(instances.scores, logits[i, list(queries), list(classes)].sigmoid(), rtol=0, atol=1e-6)
        cx, cy, w, h = boxes[i, list(queries)].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * torch.tensor([x["width"], x["height"]] * 2)
        torch.testing.assert_close(instances.pred_boxes.tensor, xyxy, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="eval_variant"):
        build("model.eval_variant=route9")


def manual_instructive_attention(query, query_pos, token_content, token_pos, mha, blocked=None):
    """Multi-head attention written out from ``mha``'s projection weights: queries Q = query + pos,
    keys K = [token content + token position; query + pos], values V = [token content; query];
    per head softmax(Q W_q (K W_k)^T / sqrt(d_head)) (V W_v), heads concatenated through the output
    projection. ``blocked`` (Q, T + Q) True where a query may not attend. Returns (output (B, Q, d),
    head-averaged weights (B, Q, T + Q))."""
    batch, num, d = query.shape
    heads = mha.num_heads
    dh = d // heads
    w_q, w_k, w_v = mha.in_proj_weight.split(d)
    b_q, b_k, b_v = mha.in_proj_bias.split(d)
    tokens_k = (token_content + token_pos)[None].expand(batch, -1, -1)
    keys = torch.cat([tokens_k, query + query_pos], 1)
    values = torch.cat([token_content[None].expand(batch, -1, -1), query], 1)

    def split_heads(x):  # (B, N, d) -> (B, heads, N, dh)
        return x.view(batch, x.shape[1], heads, dh).transpose(1, 2)

    q = split_heads((query + query_pos) @ w_q.T + b_q)
    k = split_heads(keys @ w_k.T + b_k)
    v = split_heads(values @ w_v.T + b_v)
    logits = q @ k.transpose(-1, -2) / dh ** 0.5
    if blocked is not None:
        logits = logits.masked_fill(blocked, float("-inf"))
    weights = logits.softmax(-1)  # (B, heads, Q, T + Q)
    out = (weights @ v).transpose(1, 2).reshape(batch, num, d)
    return out @ mha.out_proj.weight.T + mha.out_proj.bias, weights.mean(1)


def test_instructive_attention_weights_and_masks():
    """``attend`` (output and head-averaged weights) against ``manual_instructive_attention`` (K = [token
    content + token position; queries + positions], V = [token content; queries]), without a mask and
    with a query-group mask and the tokens hidden from the group's queries."""
    torch.manual_seed(0)
    d, q, t = 32, 7, 3
    shared = SelfAttentionBlock(d, num_heads=4)
    query = torch.randn(2, q, d)
    context = QueryContext(query_pos=torch.randn(2, q, d), reference_points=None, memory=None, spatial_shapes=None, level_start_index=None)
    branch = InstructiveSelfAttentionBranch(d, t)
    with torch.no_grad():  # tokens of the size of the queries (the Xavier init is small): they matter
        branch.token_content.normal_()
        branch.token_pos.normal_()
        out, weights = branch.attend(query, context, shared, need_weights=True)
        expected_out, expected_weights = manual_instructive_attention(query, context.query_pos, branch.token_content,
                                                                      branch.token_pos, shared.attn)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-5)
    assert (weights[..., :t] > 0.01).any()  # the tokens get real weight

    # Queries 2-6 form a query group (e.g. DINO's denoising queries): masked from the first two, and
    # the tokens hidden from them (the authors' DINO code), unless instruct_groups.
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    context.self_attn_mask = groups[:, None] != groups[None]
    context.group_queries = (groups == 1).expand(2, q)
    masked = InstructiveSelfAttentionBranch(d, t)
    masked.load_state_dict(branch.state_dict())
    blocked = torch.cat([torch.zeros(q, t, dtype=torch.bool), context.self_attn_mask], 1)
    blocked[2:, :t] = True
    with torch.no_grad():
        out, weights = masked.attend(query, context, shared, need_weights=True)
        expected_out, expected_weights = manual_instructive_attention(query, context.query_pos, branch.token_content,
                                                                      branch.token_pos, shared.attn, blocked)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-5)
    assert (weights[:, 2:, :t] == 0).all() and (weights[:, :2, :t] > 0).all()
    instructing_groups = InstructiveSelfAttentionBranch(d, t, instruct_groups=True)
    instructing_groups.load_state_dict(branch.state_dict())
    with torch.no_grad():
        _, weights_all = instructing_groups.attend(query, context, shared, need_weights=True)
    assert (weights_all[..., :t] > 0).all() and (weights_all[:, :2, t + 2:] == 0).all()
    # Route-3's self-attention block: its own norm around the shared attention's output.
    with torch.no_grad():
        torch.testing.assert_close(masked.self_attention(query, context, shared), masked.norm(query + expected_out), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, cap", [("mr_deformable_detr_plusplus_r50_12ep", 225), ("mr_deformable_detr_plusplus_r50_12ep_300q", 225),
                                       ("mr_detr_shapes_tiny", 25)])
def test_the_authors_one_to_many_rules_are_the_default(name, cap):
    """#27 item 4: each GT its top-min(c, 6) queries among all queries, positives randomly
    subsampled to a constant 0.25 x the queries."""
    matcher = instantiate(LazyConfig.load(str(CONFIGS / f"{name}.py")).model.variants.criterion.matcher)
    assert (matcher.selection, matcher.max_positives, matcher.topk, matcher.threshold) == ("dynamic_k", cap, 6, 0.4)


def test_route_ablation_rows_own_their_blocks():
    """The route ablation's rows 3-8 (issue #27): each route owns the blocks its row names and trains
    them with its one-to-many loss; the blocks it shares are the layer's."""
    expected = {"own_self_attn": {"self_attn"}, "own_cross_attn": {"cross_attn"}, "shared_self_attn": {"cross_attn", "ffn"},
                "shared_cross_attn": {"self_attn", "ffn"}, "shared_ffn": {"self_attn", "cross_attn"}}
    model = build(f"model.variants.routes=[{','.join(expected)}]").train()
    for name, own in expected.items():
        variant = model.variants[name].layer_variants[0]
        assert set(variant.own) == own
        assert (variant.replaces_self_attention, variant.replaces_cross_attention, variant.replaces_ffn) == tuple(
            block in own for block in ("self_attn", "cross_attn", "ffn"))
    losses = model(images())
    sum(v for k, v in losses.items() if k.startswith("own_cross_attn/")).backward()
    own_ca = model.variants["own_cross_attn"].layer_variants[0].own["cross_attn"]
    assert own_ca.attn.value_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in model.variants.named_parameters() if not n.startswith("own_cross_attn."))
    assert {k.split("/")[0] for k in losses if "/" in k} >= set(expected)


def test_route_builder():
    routes = build_mr_detr_routes(num_layers=3, d_model=16, d_ffn=32)
    assert list(routes) == ["route1", "route3"]
    assert all(len(r.layer_variants) == 3 for r in routes.values())
    matcher = routes["route1"].criterion.matcher
    assert (matcher.topk, matcher.threshold, matcher.class_weight, matcher.max_positive_ratio) == (6, 0.4, 0.3, 0.25)
    assert routes["route3"].layer_variants[0].num_tokens == 10
    # Route-1 owns an FFN of both linears in every layer (the layer's norm stays shared): 16 x 32 + 32 +
    # 32 x 16 + 16 = 1072 parameters; Route-3 its 10 tokens' content and position (2 x 10 x 16) and its
    # LayerNorm (2 x 16): 352.
    for name, replaces, count in (("route1", "replaces_ffn", 1072), ("route3", "replaces_self_attention", 352)):
        branches = routes[name].layer_variants
        assert len({id(b) for b in branches}) == 3 and all(getattr(b, replaces) for b in branches), name
        assert [sum(p.numel() for p in b.parameters()) for b in branches] == [count] * 3, name
    assert build_mr_detr_routes(2, 16, 32, routes=[]) == {}
    for bad in (["route2"], ["route1", "route1"]):
        with pytest.raises(ValueError):
            build_mr_detr_routes(2, 16, 32, routes=bad)


def test_the_authors_evaluation_fuses_the_layers_scores():
    """#27 item 10: f_0 = p_0, f_l = sqrt((p_l^2.001 + f_{l-1}^1.853) / 2), kept as a logit clamped
    at 1e-3; inference ranks the fused scores and keeps the last layer's boxes; no parameters."""
    from detr_plus_projects.mr_detr.modeling import LayerScoreFusion

    fusion = LayerScoreFusion()
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    layers = [torch.tensor([[[logit(0.2), logit(0.9)]]]), torch.tensor([[[logit(0.6), logit(0.3)]]]),
              torch.tensor([[[logit(0.5), logit(0.9995)]]])]
    f1 = [math.sqrt((0.6 ** 2.001 + 0.2 ** 1.853) / 2), math.sqrt((0.3 ** 2.001 + 0.9 ** 1.853) / 2)]
    f2 = [math.sqrt((0.5 ** 2.001 + f1[0] ** 1.853) / 2), math.sqrt((0.9995 ** 2.001 + f1[1] ** 1.853) / 2)]
    f2 = [min(p, 1 - 1e-3 / (1 + 1e-3)) for p in f2]  # the logit clamp: log(p / max(1 - p, 1e-3))
    expected = torch.tensor([[[math.log(f2[0] / (1 - f2[0])), math.log(f2[1] / max(1 - f2[1], 1e-3))]]])
    torch.testing.assert_close(fusion(layers), expected.float(), rtol=1e-5, atol=1e-5)
    cfg = LazyConfig.load(str(CONFIGS / "mr_deformable_detr_plusplus_r50_12ep_authors_eval.py"))
    assert cfg.model.select_box_nums_for_evaluation == 300 and "eval_score_fusion" in cfg.model
    model = build(*SMALL_MR).eval()
    batch = images(with_instances=False)
    with torch.no_grad():
        _, state, selection = model.encode_and_select(batch)
        out = model.transformer.decode(selection.queries, state)
        model.eval_score_fusion = fusion
        final = model.inference_predictions(out)
    assert sum(p.numel() for p in fusion.parameters()) == 0
    torch.testing.assert_close(final.logits, fusion([layer.logits for layer in out.layers]))
    assert torch.equal(final.boxes, out.layers[-1].boxes)


def test_routes_start_from_the_transformers_xavier_init():
    """#27 item 9: the authors re-initialise every matrix xavier-uniform, routes included: Route-1's
    FFN has the spread of the shared FFN it stands beside (xavier std sqrt(2 / (256 + 1024)) = 0.0395;
    PyTorch's default gives the second linear 1 / sqrt(3 x 1024) = 0.018), Route-3's proposal heads' matrices too, the last box layer still
    zero and the class bias at the focal prior."""
    model = build()
    shared = model.transformer.decoder.layers[0].ffn.ffn.linear2.weight
    route1 = model.variants["route1"].layer_variants[0].ffn.linear2.weight
    xavier_std = (2 / sum(route1.shape)) ** 0.5
    assert route1.std().item() == pytest.approx(xavier_std, rel=0.05) and shared.std().item() == pytest.approx(xavier_std, rel=0.05)
    routes = build_mr_detr_routes(num_layers=1, d_model=256, d_ffn=1024, route3_proposal_classes=1)
    torch.manual_seed(0)
    route1 = routes["route1"].layer_variants[0].ffn
    assert route1.linear2.weight.std().item() == pytest.approx((2 / (256 + 1024)) ** 0.5, rel=0.05)
    heads = routes["route3"].query_selection
    assert heads.box_head.layers[0].weight.std().item() == pytest.approx((2 / 512) ** 0.5, rel=0.05)
    assert heads.box_head.layers[-1].weight.abs().sum() == 0 and torch.allclose(heads.class_head.bias, torch.tensor(-4.59511985))


@pytest.mark.parametrize("name, routes, queries", [
    ("mr_deformable_detr_plusplus_r50_12ep_300q", ["route1", "route3"], 300),
    ("mr_deformable_detr_plusplus_r50_12ep", ["route1", "route3"], 900),
    ("mr_deformable_detr_plusplus_r50_12ep_route1_only", ["route1"], 900),
    ("mr_deformable_detr_plusplus_r50_12ep_route3_only", ["route3"], 900),
    ("mr_deformable_detr_plusplus_r50_12ep_share_all", ["share_all"], 900),
    ("mr_deformable_detr_plusplus_r50_12ep_primary_only", [], 900),
    ("mr_detr_shapes_tiny", ["route1", "route3"], 100),
])
def test_configs_load_and_instantiate(name, routes, queries):
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    assert set(cfg) == {"dataloader", "lr_multiplier", "model", "optimizer", "train"}
    assert cfg.train.output_dir.endswith(name)
    model = instantiate(cfg.model)
    assert type(model) is DeformableDETR and list(model.variants) == routes and model.transformer.num_queries == queries
    assert model.enc_loss_weight == (1.0 if not routes else 3.0) and model.eval_variant is None
    num_layers = len(model.transformer.decoder.layers)
    assert all(len(route.layer_variants) == num_layers for route in model.variants.values())
    if "route3" in routes:
        assert model.variants.route3.layer_variants[0].num_tokens == 10


def test_vfl_plus_primary_diagnostic_configs_change_only_the_one_to_one_class_loss():
    """Issue #11's diagnostic pair: each equals its source config but for the primary criterion
    (VFL+ with s = IoU, x0.25, class weight 1) and an encoder criterion that keeps the focal loss."""
    for name, source in (("baseline_vfl_plus_primary", REPO / "configs" / "shapes" / "deformable_detr_tiny.py"),
                         ("mr_detr_vfl_plus_primary", TINY)):
        cfg, base = LazyConfig.load(str(CONFIGS / "diagnostics" / f"{name}.py")), LazyConfig.load(str(source))
        model, base_model = instantiate(cfg.model), instantiate(base.model)
        assert isinstance(model.criterion.class_loss, VarifocalPlusLoss)
        assert (model.criterion.class_loss.quality, model.criterion.class_loss.scale) == ("iou", 0.25)
        assert model.criterion.loss_weights == {**base_model.criterion.loss_weights, "class": 1.0}
        assert base_model.enc_criterion is None and isinstance(model.enc_criterion.class_loss, FocalLoss)
        assert model.enc_criterion.loss_weights == base_model.criterion.loss_weights
        assert list(model.variants) == list(base_model.variants) and model.enc_loss_weight == base_model.enc_loss_weight
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in base_model.state_dict().items()}
        assert cfg.optimizer == base.optimizer and cfg.train.output_dir.endswith(name)


def test_attention_map_tool(model, tmp_path):
    """The tool writes a PNG; its layer-1 weights equal ``manual_instructive_attention`` (written out from
    the layer's projection weights) on Route-3's own stream: its layer-0 output and own positions."""
    torch.save({"model": model.state_dict()}, tmp_path / "mr.pth")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    out = tmp_path / "maps" / "attention.png"
    attention_map.main(["--config-file", str(TINY), "--checkpoint", str(tmp_path / "mr.pth"), "--image", str(tmp_path / "image.png"),
                        "--layer", "1", "--out", str(out), *SMALL_MR])
    assert Image.open(out).size[0] > 100
    weights, tokens = attention_map.instructive_attention(model, images()[0]["image"], 0)
    assert tokens == NUM_TOKENS and weights.shape == (24, NUM_TOKENS + 24)
    torch.testing.assert_close(weights.sum(-1), torch.ones(24))
    # Layer 1 sees Route-3's own stream: its layer-0 output and its refined boxes.
    weights, _ = attention_map.instructive_attention(model, images()[0]["image"], 1)
    batch = images(with_instances=False)[:1]
    route3 = decode_all_routes(model, batch, {"route3": model.variants.route3}).variants["route3"]
    decoder = model.transformer.decoder
    with torch.no_grad():
        # The ++ model's positions are static: Route-3's own selected proposals' positional part at every layer.
        _, state, _ = model.encode_and_select(batch)
        query_pos = model.variants.route3.query_selection(model.transformer, state).queries.position
        branch = model.variants.route3.layer_variants[1]
        expected = manual_instructive_attention(route3[0].hidden, query_pos, branch.token_content, branch.token_pos,
                                                decoder.layers[1].self_attn.attn)[1]
    torch.testing.assert_close(weights, expected[0], rtol=0, atol=1e-6)
    assert "self_attention" not in vars(model.variants.route3.layer_variants[1]) and model.eval_variant is None  # restored


def test_coco_config_has_the_authors_recipe():
    """docs/authors_code_facts.md#mr-detr-losses-initialisation-and-recipe, Deformable-DETR++ 12 ep: AdamW lr 1e-4 with only the backbone at
    x0.1 (sampling offsets at the full LR), weight decay 1e-4, clip 0.1, LR drop at epoch 11 of 12
    (7500 iterations each at batch 16), no warm-up; encoder losses x3 matched on the anchors without
    a class cost; Route-3 with its own class-agnostic selection."""
    cfg = LazyConfig.load(str(CONFIGS / "mr_deformable_detr_plusplus_r50_12ep.py"))
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, dict(cfg.optimizer.lr_factors)) == (1e-4, 1e-4, {"backbone": 0.1})
    assert cfg.train.clip_grad_norm == 0.1 and cfg.dataloader.train.total_batch_size == 16
    assert cfg.lr_multiplier.warmup_length == 0.0
    scheduler = cfg.lr_multiplier.scheduler
    assert (scheduler.num_updates, list(scheduler.milestones), list(scheduler["values"])) == (90000, [82500], [1.0, 0.1])
    assert (cfg.model.enc_loss_weight, cfg.model.enc_anchor_matcher.cost_class) == (3.0, 0.0)
    assert (cfg.model.enc_anchor_matcher.cost_bbox, cfg.model.enc_anchor_matcher.cost_giou) == (5.0, 2.0)
    assert cfg.model.variants.route3_proposal_classes == 1 and cfg.model.transformer.enc_class_agnostic
    model = build(config=CONFIGS / "mr_deformable_detr_plusplus_r50_12ep.py")
    cfg.optimizer.model = model
    lrs = {}
    for group in instantiate(cfg.optimizer).param_groups:
        for p in group["params"]:
            lrs[id(p)] = group["lr"]
    by_name = {n: lrs[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert {lr for n, lr in by_name.items() if n.startswith("backbone.")} == {1e-5}
    assert {lr for n, lr in by_name.items() if not n.startswith("backbone.")} == {1e-4}
    assert any("sampling_offsets" in n for n in by_name)


@pytest.mark.parametrize("name, queries", [("mr_deformable_detr_plusplus_r50_12ep", 900), ("mr_deformable_detr_plusplus_r50_12ep_300q", 300)])
def test_coco_configs_have_the_papers_losses_matcher_and_queries(name, queries):
    """docs/authors_code_facts.md#mr-detr (Deformable variant), against the instantiated model: 900 queries (the
    headline) or 300; Route-1 and Route-3 with a branch in every decoder layer and 10 instruction
    tokens; every route's losses focal (alpha 0.25, gamma 2) class 2, L1 5, GIoU 2 on every layer,
    unscaled; the o2m matcher with quality 0.7 IoU + 0.3 class, threshold 0.4, top-1 kept, k 6 and at
    most 0.25 x 900 = 225 positives; the primary route Hungarian 2/5/2 with losses 2/5/2; encoder losses x3."""
    cfg = LazyConfig.load(str(CONFIGS / f"{name}.py"))
    assert cfg.model.transformer.num_queries == queries and cfg.model.transformer.decoder.num_layers == 6
    model = build(config=CONFIGS / f"{name}.py")  # (SMALL sizes: 2 decoder layers, 24 queries)
    assert list(model.variants) == ["route1", "route3"] and model.enc_loss_weight == 3.0
    assert model.variants.route3.layer_variants[0].num_tokens == 10
    primary = model.criterion
    assert (primary.matcher.cost_class, primary.matcher.cost_bbox, primary.matcher.cost_giou) == (2.0, 5.0, 2.0)
    assert primary.loss_weights == {"class": 2.0, "bbox": 5.0, "giou": 2.0} and isinstance(primary.class_loss, FocalLoss)
    for route in model.variants.values():
        assert len(route.layer_variants) == NUM_LAYERS and route.loss_scale == 1.0
        criterion, matcher = route.criterion, route.criterion.matcher
        assert criterion.loss_weights == {"class": 2.0, "bbox": 5.0, "giou": 2.0}
        assert isinstance(criterion.class_loss, FocalLoss) and (criterion.class_loss.alpha, criterion.class_loss.gamma) == (0.25, 2.0)
        assert (matcher.topk, matcher.threshold, matcher.class_weight, matcher.keep_top1) == (6, 0.4, 0.3, True)
        assert int(matcher.max_positive_ratio * 900) == 225 if matcher.max_positives is None else matcher.max_positives == 225
