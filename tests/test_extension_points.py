"""The decoder's extension points, one test (or group) per point, each checking the mechanism by value:

1. query groups with a self-attention mask;   2. route variants of a layer (LayerBranch / TrainingRoute);
3. wrapping blocks and layers;                 4. external queries through ``transformer.decode``;
5. per-layer outputs and matching indices;     6. inference ignores routes; stripped checkpoints.
"""
import copy

import pytest
import torch
from detectron2.config import LazyCall as L
from torch import nn

from detr_plus.modeling import (
    DecoderOutput,
    LayerBranch,
    LayerPredictions,
    OneToManyMatcher,
    SetCriterion,
    TrainingRoute,
    group_self_attn_mask,
    strip_training_routes,
)
from detr_plus.modeling.blocks import FFN, QueryContext
from model_utils import (
    SMALL_IMAGE_SIZES,
    D_MODEL,
    NUM_CLASSES,
    CallCounter,
    build,
    encode,
    features_of,
    primary_losses,
    random_queries,
    synthetic_batch,
    targets_of,
    tiny_model_config,
)

DEC_LAYERS = 2
NUM_QUERIES = 20


# --- method-side modules, written the way a project would ------------------------------------------
class OwnFFNBranch(LayerBranch):
    """Mr. DETR Route-1 style: own FFN weights inside the layer's shared residual + norm."""

    replaces_ffn = True

    def __init__(self, d_model=D_MODEL, d_ffn=2 * D_MODEL):
        super().__init__()
        self.own_ffn = FFN(d_model, d_ffn)

    def feed_forward(self, query, context, shared):
        return shared(query, context, ffn=self.own_ffn)


class InstructionTokenBranch(LayerBranch):
    """Mr. DETR Route-3 style: learnable tokens prepended to keys/values of the shared self-attention,
    with the branch's own norm."""

    replaces_self_attention = True

    def __init__(self, d_model=D_MODEL, num_tokens=4):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_tokens, d_model))
        self.token_pos = nn.Parameter(torch.randn(num_tokens, d_model))
        self.norm = nn.LayerNorm(d_model)

    def self_attention(self, query, context, shared):
        batch = query.shape[0]
        out = shared.attend(query, context.query_pos, prefix=self.tokens.expand(batch, -1, -1),
                            prefix_pos=self.token_pos.expand(batch, -1, -1))
        return self.norm(query + out)


def o2m_criterion():
    return L(SetCriterion)(matcher=L(OneToManyMatcher)(topk=3), loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0})


def named_routes(**routes):
    return routes


def route_cfg(branch_cls, criterion=None, **branch_kwargs):
    return L(TrainingRoute)(branches=[L(branch_cls)(**branch_kwargs) for _ in range(DEC_LAYERS)],
                            criterion=criterion or o2m_criterion())


def model_with_routes(base, **routes):
    """The tiny ++ model from the config with ``routes`` set in the config, holding ``base``'s weights."""
    cfg = tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES)
    # detectron2 v0.6's instantiate does not recurse into a plain dict (no _target_): with
    # ``cfg.routes = {"aux": L(TrainingRoute)(...)}`` the model would get uninstantiated configs
    # (and L(dict) cannot be stored in an OmegaConf config), hence a function that returns its kwargs.
    cfg.routes = L(named_routes)(**routes)
    model = build(cfg, seed=5)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("routes.") for k in missing)
    return model


@pytest.fixture(scope="module")
def base():
    model = build(tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES), seed=0)
    model.eval()
    return model


@pytest.fixture(scope="module")
def state(base):
    with torch.no_grad():
        return encode(base, synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES))


@pytest.fixture(scope="module")
def features(base):
    with torch.no_grad():
        return features_of(base, synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES))


def assert_layers_close(a, b, atol=1e-5, queries=slice(None)):
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        for field in ("hidden", "logits", "boxes", "reference"):
            torch.testing.assert_close(getattr(x, field)[:, queries], getattr(y, field), rtol=0, atol=atol, msg=field)


# --- 1. query groups ---------------------------------------------------------------------------------
def test_group_self_attn_mask_values():
    mask = group_self_attn_mask([2, 3])
    expected = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)


def test_query_groups_decode_independently(base, state):
    t = base.transformer
    c1, r1 = random_queries(2, 6, seed=1)
    c2, r2 = random_queries(2, 9, seed=2)
    content, reference = torch.cat([c1, c2], 1), torch.cat([r1, r2], 1)
    with torch.no_grad():
        alone1 = t.decode(c1, r1, state)
        alone2 = t.decode(c2, r2, state)
        grouped = t.decode(content, reference, state, self_attn_mask=group_self_attn_mask([6, 9]))
        unmasked = t.decode(content, reference, state)
    assert_layers_close(grouped, alone1, queries=slice(0, 6))
    assert_layers_close(grouped, alone2, queries=slice(6, 15))
    # Without the mask the groups see each other: every layer's queries differ.
    for layer_u, layer_a in zip(unmasked.layers, alone1.layers):
        assert (layer_u.hidden[:, :6] - layer_a.hidden).abs().max() > 1e-3


# --- 2. route variants -------------------------------------------------------------------------------
def layer_blocks(decoder):
    blocks = {}
    for i, layer in enumerate(decoder.layers):
        blocks[f"sa{i}"], blocks[f"ca{i}"] = layer.self_attn, layer.cross_attn
    return blocks


def test_own_ffn_route_losses_shared_work_and_gradients(base):
    model = model_with_routes(base, aux=route_cfg(OwnFFNBranch))
    model.train()
    route = model.routes["aux"]
    assert isinstance(route, TrainingRoute) and all(isinstance(b, OwnFFNBranch) for b in route.branches)
    decoder = model.transformer.decoder
    with CallCounter(layer_blocks(decoder)) as calls:
        losses = model(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    # Self- and cross-attention run once per layer although two routes read them.
    assert all(n == 1 for n in calls.counts.values()), calls.counts
    aux_keys = {f"aux/loss_{term}_{i}" for term in ("class", "bbox", "giou") for i in range(DEC_LAYERS)}
    assert aux_keys <= set(losses) and set(losses) - aux_keys == set(primary_losses(losses))
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(primary_losses(losses)) == 9  # (class, bbox, giou) x (layer 0, last layer, encoder)

    primary = sum(primary_losses(losses).values())
    aux = sum(v for k, v in losses.items() if k.startswith("aux/"))
    route_params = list(route.parameters())
    last_shared_ffn = list(decoder.layers[-1].ffn.ffn.parameters())
    last_shared_norm = list(decoder.layers[-1].ffn.norm.parameters())
    grads = torch.autograd.grad(primary, route_params + last_shared_norm, retain_graph=True, allow_unused=True)
    assert all(g is None for g in grads[: len(route_params)]), "primary losses must not reach the route's FFN"
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(route_params):])
    grads = torch.autograd.grad(aux, route_params + last_shared_ffn + last_shared_norm, allow_unused=True)
    own, shared_ffn, shared_norm = grads[: len(route_params)], grads[len(route_params): -2], grads[-2:]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in own)
    assert all(g is None for g in shared_ffn), "the route uses its own FFN weights, not the shared ones"
    assert all(g is not None and g.abs().sum() > 0 for g in shared_norm), "the residual norm is shared"


def test_share_all_branch_equals_primary(base, features):
    same = TrainingRoute([LayerBranch() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion))
    t = base.transformer
    with torch.no_grad():
        out, _, _ = t(*features, routes={"same": same})
    assert list(out.routes) == ["same"] and len(out.routes["same"]) == DEC_LAYERS
    for primary, routed in zip(out.layers, out.routes["same"]):
        for field in ("hidden", "logits", "boxes", "reference"):
            torch.testing.assert_close(getattr(routed, field), getattr(primary, field), rtol=0, atol=0)
    # A route that skips a layer (None) gets no prediction there.
    partial = TrainingRoute([None, LayerBranch()], copy.deepcopy(base.criterion))
    with torch.no_grad():
        out, _, _ = t(*features, routes={"partial": partial})
    assert out.routes["partial"][0] is None and out.routes["partial"][1] is not None


def test_own_self_attention_branch_batches_cross_attention(base, features):
    torch.manual_seed(0)
    route = TrainingRoute([InstructionTokenBranch() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion))
    ffn_route = TrainingRoute([OwnFFNBranch() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion))
    t = base.transformer
    captured = []
    handle = t.decoder.layers[1].cross_attn.register_forward_hook(lambda m, args, out: captured.append((args, out)))
    try:
        with torch.no_grad(), CallCounter(layer_blocks(t.decoder)) as calls:
            routed, _, _ = t(*features, routes={"sa": route, "ffn": ffn_route})
        assert all(n == 1 for n in calls.counts.values()), calls.counts
        with torch.no_grad():
            plain, _, _ = t(*features)
    finally:
        handle.remove()
    # One cross-attention call over primary + branch queries (batched along the query axis).
    (query_in, context), crossed = captured[0]
    assert query_in.shape == (2, 2 * NUM_QUERIES, D_MODEL) and context.reference_points.shape[1] == 2 * NUM_QUERIES
    # The primary route is exactly what it is without routes.
    assert_layers_close(routed, plain)
    # The branch's part of the batched call equals a separate cross-attention call on it.
    with torch.no_grad():
        single_context = QueryContext(**{**vars(context), "query_pos": context.query_pos[:, NUM_QUERIES:],
                                         "reference_points": context.reference_points[:, NUM_QUERIES:]})
        alone = t.decoder.layers[1].cross_attn(query_in[:, NUM_QUERIES:], single_context)
        torch.testing.assert_close(crossed[:, NUM_QUERIES:], alone, rtol=0, atol=1e-5)
        # ... and the branch's SA output really is the token-prefixed attention, not the shared one.
        assert (query_in[:, NUM_QUERIES:] - query_in[:, :NUM_QUERIES]).abs().max() > 1e-3
    sa_predictions = routed.routes["sa"]
    assert len(sa_predictions) == DEC_LAYERS and all(p.logits.shape == (2, NUM_QUERIES, NUM_CLASSES) for p in sa_predictions)
    assert (sa_predictions[-1].logits - routed.layers[-1].logits).abs().max() > 1e-4
    # The branch's predictions = shared FFN + shared heads on its cross-attention output.
    layer, decoder = t.decoder.layers[1], t.decoder
    with torch.no_grad():
        hidden = layer.ffn(crossed[:, NUM_QUERIES:], context)
        torch.testing.assert_close(sa_predictions[1].hidden, hidden, rtol=0, atol=1e-6)
        torch.testing.assert_close(sa_predictions[1].logits, decoder.class_heads[1](hidden), rtol=0, atol=1e-6)


def test_own_stream_route_is_a_full_pass_with_its_modules(base, features):
    """``own_stream=True``: the route predicts exactly what the decoder predicts with the route's
    modules in place of the shared ones, starting from the same queries and boxes (a full pass
    through the weight-shared decoder), while the primary route is unchanged. Layer 0's shared
    self-attention (same input for both) runs once; cross-attention stays one call per layer."""
    torch.manual_seed(1)
    t = copy.deepcopy(base.transformer)
    with torch.no_grad():  # box heads start at zero (boxes = references): let the streams' boxes move
        for head in t.decoder.box_heads:
            head.layers[-1].weight.normal_(0, 0.05)
    route = TrainingRoute([OwnFFNBranch() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion), own_stream=True)
    with torch.no_grad(), CallCounter(layer_blocks(t.decoder)) as calls:
        routed, _, _ = t(*features, routes={"ffn": route})
    assert calls.counts == {"sa0": 1, "ca0": 1, "sa1": 2, "ca1": 1}
    with torch.no_grad():
        plain, _, _ = t(*features)
    assert_layers_close(routed, plain)
    alone = copy.deepcopy(t)  # the decoder with the route's FFNs
    for layer, branch in zip(alone.decoder.layers, route.branches):
        layer.ffn.ffn.load_state_dict(branch.own_ffn.state_dict())
    with torch.no_grad():
        expected, _, _ = alone(*features)
    for got, want in zip(routed.routes["ffn"], expected.layers):
        for field in ("hidden", "logits", "boxes", "reference"):
            torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=1e-5, msg=field)
    assert (routed.routes["ffn"][1].reference - plain.layers[1].reference).abs().max() > 1e-4
    with pytest.raises(ValueError, match="own_stream"):
        TrainingRoute([None, OwnFFNBranch()], copy.deepcopy(base.criterion), own_stream=True)


# --- 3. wrapping blocks ------------------------------------------------------------------------------
def gather_queries(x, index):
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def scatter_queries(x, index, values):
    return x.scatter(1, index[..., None].expand(-1, -1, x.shape[-1]), values)


class GatherScatterBlock(nn.Module):
    """QR-DETR style: only the queries ``index`` (B, K) pass through ``inner``; the rest bypass it."""

    def __init__(self, inner, index):
        super().__init__()
        self.inner, self.index = inner, index

    def forward(self, query, context):
        processed = self.inner(gather_queries(query, self.index), context.select(self.index))
        return scatter_queries(query, self.index, processed)


class GatherScatterLayer(nn.Module):
    """The same around a whole decoder layer (its self-attention then sees only the selected queries)."""

    def __init__(self, inner, index):
        super().__init__()
        self.inner, self.index = inner, index

    def forward(self, query, context, branches=()):
        out, branch_outs = self.inner(gather_queries(query, self.index), context.select(self.index), branches)
        return scatter_queries(query, self.index, out), branch_outs


def half_index(batch, num, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(num, generator=gen)[: num // 2] for _ in range(batch)])


def test_context_select():
    context = QueryContext(query_pos=torch.arange(2 * 4 * 3.0).view(2, 4, 3), reference_points=torch.arange(2 * 4 * 2 * 4.0).view(2, 4, 2, 4),
                           memory=torch.zeros(2, 5, 3), spatial_shapes=torch.tensor([[1, 5]]), level_start_index=torch.tensor([0]))
    index = torch.tensor([[3, 1], [0, 2]])
    picked = context.select(index)
    torch.testing.assert_close(picked.query_pos, torch.stack([context.query_pos[0, [3, 1]], context.query_pos[1, [0, 2]]]))
    torch.testing.assert_close(picked.reference_points, torch.stack([context.reference_points[0, [3, 1]], context.reference_points[1, [0, 2]]]))
    assert picked.memory is context.memory


def test_wrapped_cross_attention_processes_only_selected_queries(base, state):
    t = copy.deepcopy(base.transformer)
    inner = t.decoder.layers[0].cross_attn
    index = half_index(2, 10)
    t.decoder.layers[0].cross_attn = GatherScatterBlock(inner, index)
    captured = []
    t.decoder.layers[0].cross_attn.register_forward_hook(lambda m, args, out: captured.append((args, out)))
    content, reference = random_queries(2, 10, seed=3)
    with torch.no_grad():
        out = t.decode(content, reference, state)
        (query_in, context), query_out = captured[0]
        full = inner(query_in, context)
    processed = torch.zeros(2, 10, dtype=torch.bool)
    processed[torch.arange(2)[:, None], index] = True
    torch.testing.assert_close(query_out[~processed], query_in[~processed], rtol=0, atol=0)  # bypassed
    torch.testing.assert_close(query_out[processed], full[processed], rtol=0, atol=1e-5)  # as on the full set
    assert (query_out[processed] - query_in[processed]).abs().max() > 1e-2
    with torch.no_grad():
        reference_out = base.transformer.decode(content, reference, state)
    assert (out.layers[-1].hidden - reference_out.layers[-1].hidden).abs().max() > 1e-3  # the wrapper is in the path


def test_wrapped_layer_processes_only_selected_queries(base, state):
    t = copy.deepcopy(base.transformer)
    inner = t.decoder.layers[0]
    index = half_index(2, 10, seed=1)
    t.decoder.layers[0] = GatherScatterLayer(inner, index)
    captured = []
    t.decoder.layers[0].register_forward_hook(lambda m, args, out: captured.append(args))
    content, reference = random_queries(2, 10, seed=4)
    with torch.no_grad():
        out = t.decode(content, reference, state)
        (query_in, context, _), = captured
        alone, _ = inner(gather_queries(query_in, index), context.select(index))
        # Independent of select(): the selected queries decoded on their own by the unwrapped model.
        subset = base.transformer.decode(gather_queries(content, index), gather_queries(reference, index), state)
    processed = torch.zeros(2, 10, dtype=torch.bool)
    processed[torch.arange(2)[:, None], index] = True
    hidden0 = out.layers[0].hidden
    torch.testing.assert_close(hidden0[~processed], content[~processed], rtol=0, atol=0)
    torch.testing.assert_close(gather_queries(hidden0, index), alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(gather_queries(hidden0, index), subset.layers[0].hidden, rtol=0, atol=1e-5)
    torch.testing.assert_close(gather_queries(out.layers[0].logits, index), subset.layers[0].logits, rtol=0, atol=1e-5)
    assert len(out.layers) == DEC_LAYERS  # the following layer still runs on all queries


# --- 4. external queries -----------------------------------------------------------------------------
def test_external_queries(base, state):
    t = base.transformer
    content, reference = random_queries(2, 7, seed=6)
    other_content, _ = random_queries(2, 7, seed=7)
    content.requires_grad_()
    for mode in ("eval", "train"):  # the ++ config has dropout 0: deterministic in both modes
        getattr(t, mode)()
        first = t.decode(content, reference, state)
        second = t.decode(content, reference, state)
        assert isinstance(first, DecoderOutput) and len(first.layers) == DEC_LAYERS and first.routes == {}
        for a, b in zip(first.layers, second.layers):
            assert isinstance(a, LayerPredictions)
            assert a.logits.shape == (2, 7, NUM_CLASSES) and a.boxes.shape == (2, 7, 4)
            assert a.hidden.shape == (2, 7, D_MODEL) and a.reference.shape == (2, 7, 4)
            for field in ("hidden", "logits", "boxes", "reference"):
                assert torch.equal(getattr(a, field), getattr(b, field)), field
        torch.testing.assert_close(first.layers[0].reference, reference)
    t.eval()
    # The result depends on the given content, and the given content is not detached.
    with torch.no_grad():
        other = t.decode(other_content, reference, state)
    assert (other.layers[-1].logits - first.layers[-1].logits).abs().max() > 1e-4
    (grad,) = torch.autograd.grad(first.layers[-1].logits.sum(), content)
    assert grad.abs().sum() > 0


# --- 5. per-layer outputs and matching indices -------------------------------------------------------
def test_per_layer_outputs_and_matching_indices(base, features):
    from detr_plus.layers.box_ops import inverse_sigmoid

    t = base.transformer
    with torch.no_grad():
        out, enc, _ = t(*features)
    decoder = t.decoder
    assert len(out.layers) == DEC_LAYERS
    for i, layer in enumerate(out.layers):
        assert layer.logits.shape == (2, NUM_QUERIES, NUM_CLASSES) and layer.boxes.shape == (2, NUM_QUERIES, 4)
        assert layer.hidden.shape == (2, NUM_QUERIES, D_MODEL) and layer.reference.shape == (2, NUM_QUERIES, 4)
        with torch.no_grad():
            torch.testing.assert_close(layer.logits, decoder.class_heads[i](layer.hidden))
            torch.testing.assert_close(layer.boxes, (decoder.box_heads[i](layer.hidden) + inverse_sigmoid(layer.reference)).sigmoid())
        if i:
            torch.testing.assert_close(layer.reference, out.layers[i - 1].boxes)
    torch.testing.assert_close(out.layers[0].reference, enc["boxes"])

    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    targets = targets_of(base, batch)
    layer = out.layers[-1]
    losses, indices = base.criterion(layer.logits, layer.boxes, targets, 2.0)
    assert set(losses) == {"loss_class", "loss_bbox", "loss_giou"}
    assert len(indices) == 2
    (q0, g0), (q1, g1) = indices
    assert len(q0) == len(g0) == 2 and sorted(g0.tolist()) == [0, 1] and len(set(q0.tolist())) == 2
    assert len(q1) == len(g1) == 0  # the image without boxes
    # The indices are the matching the losses used: a method can recompute any term from them.
    l1 = (layer.boxes[0, q0] - targets[0]["boxes"][g0]).abs().sum() / 2.0
    torch.testing.assert_close(losses["loss_bbox"], 5.0 * l1)
    again, same = base.criterion(layer.logits, layer.boxes, targets, 2.0, indices=indices)
    assert same is indices
    for k in losses:
        torch.testing.assert_close(again[k], losses[k])
    # ... and a given matching is honoured (e.g. a teacher's).
    other_q = torch.tensor([q for q in range(NUM_QUERIES) if q not in q0.tolist()][:2])
    forced, _ = base.criterion(layer.logits, layer.boxes, targets, 2.0, indices=[(other_q, g0), (q1, g1)])
    l1_forced = (layer.boxes[0, other_q] - targets[0]["boxes"][g0]).abs().sum() / 2.0
    torch.testing.assert_close(forced["loss_bbox"], 5.0 * l1_forced)
    assert not torch.allclose(forced["loss_bbox"], losses["loss_bbox"])


# --- 6. inference ignores routes ---------------------------------------------------------------------
def test_inference_ignores_routes_and_stripped_checkpoint_loads(base, features):
    model = model_with_routes(base, aux=route_cfg(OwnFFNBranch), sa=route_cfg(InstructionTokenBranch))
    route_modules = {f"{name}:{sub}": m for name, route in model.routes.items() for sub, m in route.named_modules()}
    batch = synthetic_batch(with_instances=False, size_scale=2, sizes=SMALL_IMAGE_SIZES)

    # In training the route modules run (so the counters below can see them) ...
    model.train()
    with torch.no_grad(), CallCounter(route_modules) as calls:
        model.transformer(*features, routes=model.routes)
    assert calls.counts["aux:branches.0.own_ffn"] == 1 and calls.counts["sa:branches.1.norm"] == 1
    # ... in eval mode they never do, and the outputs are the baseline's.
    model.eval()
    with torch.no_grad(), CallCounter(route_modules) as calls:
        with_routes = model(batch)
    assert sum(calls.counts.values()) == 0, {k: v for k, v in calls.counts.items() if v}
    with torch.no_grad():
        expected = base(batch)

    def assert_same(results, reference):
        for a, b in zip(results, reference):
            a, b = a["instances"], b["instances"]
            assert a.image_size == b.image_size and len(a) == len(b) > 0
            assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
            assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)

    assert_same(with_routes, expected)

    state_dict = model.state_dict()
    assert any(k.startswith("routes.aux.") for k in state_dict) and any(k.startswith("routes.sa.") for k in state_dict)
    plain = build(tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES), seed=123)
    with pytest.raises(RuntimeError, match="routes"):
        plain.load_state_dict(state_dict, strict=True)
    plain.load_state_dict(strip_training_routes(state_dict), strict=True)
    plain.eval()
    with torch.no_grad():
        assert_same(plain(batch), with_routes)
