"""The core's extension points, one test (or group) per point, each checking the mechanism by value:

1. query groups (masks, padding, per-group losses);  2. decoder variants of a layer (LayerVariant / TrainingVariant);
3. layer wrappers, gather / scatter, updated mask, extra outputs;  4. external queries;
5. per-layer outputs and matching indices;  6. the EMA teacher;  7. inference ignores training-only parts.
"""
import copy
import re

import pytest
import torch
from detectron2.config import LazyCall as L
from torch import nn

from detr_plus.engine.ema import ModelEMA
from detr_plus.modeling import (
    FFN,
    PRIMARY,
    DecoderOutput,
    DecoderQueries,
    EncoderState,
    LayerInputs,
    LayerOutput,
    LayerPredictions,
    LayerVariant,
    OneToManyMatcher,
    OwnBlocksVariant,
    QueryContext,
    QueryGroup,
    QueryStream,
    QuerySubset,
    SetCriterion,
    Stream,
    TrainingVariant,
    group_attention_mask,
    is_training_only,
    pad_per_image,
    strip_training_parts,
)
from model_utils import (
    SMALL_IMAGE_SIZES,
    D_MODEL,
    NUM_CLASSES,
    CallCounter,
    build,
    encode,
    features_of,
    primary_losses,
    random_decoder_queries,
    synthetic_batch,
    targets_of,
    tiny_model_config,
)

DEC_LAYERS = 2
NUM_QUERIES = 20


# --- method-side modules, written the way a project would ------------------------------------------
class OwnFFNVariant(LayerVariant):
    """Mr. DETR Route-1 style: own FFN weights inside the layer's shared residual + norm."""

    replaces_ffn = True

    def __init__(self, d_model=D_MODEL, d_ffn=2 * D_MODEL):
        super().__init__()
        self.own_ffn = FFN(d_model, d_ffn)

    def feed_forward(self, query, context, shared):
        return shared(query, context, ffn=self.own_ffn)


class InstructionTokenVariant(LayerVariant):
    """Mr. DETR Route-3 style: learnable tokens prepended to keys/values of the shared self-attention,
    with the variant's own norm."""

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


def named_modules(**modules):
    return modules


def variant_cfg(layer_variant_cls, criterion=None, **layer_variant_kwargs):
    return L(TrainingVariant)(layer_variants=[L(layer_variant_cls)(**layer_variant_kwargs) for _ in range(DEC_LAYERS)],
                              criterion=criterion or o2m_criterion())


def model_with_variants(base, **variants):
    """The tiny ++ model from the config with ``variants`` set in the config, holding ``base``'s weights."""
    cfg = tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES)
    # detectron2 v0.6's instantiate does not recurse into a plain dict (no _target_): with
    # ``cfg.variants = {"aux": L(TrainingVariant)(...)}`` the model would get uninstantiated configs
    # (and L(dict) cannot be stored in an OmegaConf config), hence a function that returns its kwargs.
    cfg.variants = L(named_modules)(**variants)
    model = build(cfg, seed=5)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("variants.") for k in missing)
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
def test_group_masks_values():
    mask = group_attention_mask([2, 3])
    expected = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    # A group that sees the primary queries (DINO's denoising groups); the primary never sees groups.
    mask = group_attention_mask([2, 1, 2], sees_primary=[False, True])
    expected = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 1, 1], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def image_state(state, b):
    """The encoder state of image ``b`` alone."""
    return EncoderState(state.memory[b : b + 1], state.spatial_shapes, state.level_start_index,
                        state.valid_ratios[b : b + 1], state.padding_mask[b : b + 1])


def plain_criterion():
    return SetCriterion(OneToManyMatcher(topk=2), loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0})


def test_each_query_group_decodes_independently(base, state):
    """Each group decoded beside the others under the mask equals the group decoded alone (a group
    that sees the primary queries equals [primary, group] decoded alone); the primary queries are
    unchanged by the groups; without the mask the groups would see each other."""
    t = base.transformer
    primary = random_decoder_queries(2, 6, seed=1, static_position=True)
    g1 = random_decoder_queries(2, 9, seed=2, static_position=True)
    g2 = random_decoder_queries(2, 4, seed=3, static_position=True)
    groups = {"a": QueryGroup(g1, plain_criterion()), "b": QueryGroup(g2, plain_criterion(), sees_primary=True)}
    with torch.no_grad():
        joint = t.decode(primary, state, groups=groups)
        alone0 = t.decode(primary, state)
        alone1 = t.decode(g1, state)
        with_primary = t.decode(primary, state, groups={"b": groups["b"]})
        unmasked = t.decode(DecoderQueries.concat([primary, g1]), state)
    assert list(joint.groups) == ["a", "b"] and all(len(v) == DEC_LAYERS for v in joint.groups.values())
    assert_layers_close(joint, alone0)
    assert_layers_close(DecoderOutput(joint.groups["a"]), alone1)
    assert_layers_close(DecoderOutput(joint.groups["b"]), DecoderOutput(with_primary.groups["b"]))
    # "b" really reads the primary queries: decoded with no primary beside it, it differs.
    with torch.no_grad():
        b_alone = t.decode(g2, state)
    assert (b_alone.layers[-1].hidden - joint.groups["b"][-1].hidden).abs().max() > 1e-3
    for layer_u, layer_a in zip(unmasked.layers, alone0.layers):
        assert (layer_u.hidden[:, :6] - layer_a.hidden).abs().max() > 1e-3


def test_groups_of_boxes_beside_reference_points_decode_apart(base, state):
    """The single-stage model's primary queries have 2-d reference points; a group anchored at boxes
    (OD-DETR's auxiliary groups) is decoded in a pass of its own, which gives what the group decoded
    alone gives; the primary queries are unchanged; a group that must see the primary queries
    cannot be decoded apart and says so."""
    t = base.transformer
    primary = random_decoder_queries(2, 6, seed=1, static_position=True)
    points = DecoderQueries(primary.content, primary.reference[..., :2], primary.position)
    boxes = random_decoder_queries(2, 5, seed=2, static_position=True)
    with torch.no_grad():
        joint = t.decode(points, state, groups={"boxes": QueryGroup(boxes, plain_criterion())})
        alone_points, alone_boxes = t.decode(points, state), t.decode(boxes, state)
    assert list(joint.groups) == ["boxes"]
    assert_layers_close(joint, alone_points, atol=1e-6)
    assert_layers_close(DecoderOutput(joint.groups["boxes"]), alone_boxes, atol=1e-6)
    assert joint.groups["boxes"][0].boxes.shape == (2, 5, 4)
    empty = DecoderQueries(boxes.content[:, :0], boxes.reference[:, :0], boxes.position[:, :0])
    with torch.no_grad():  # a batch without objects: a group of no boxes gives empty predictions
        nothing = t.decode(points, state, groups={"boxes": QueryGroup(empty, plain_criterion())})
    assert [p.logits.shape for p in nothing.groups["boxes"]] == [(2, 0, NUM_CLASSES)] * DEC_LAYERS
    with pytest.raises(ValueError, match=r"\['boxes'\] see the primary queries"):
        t.decode(points, state, groups={"boxes": QueryGroup(boxes, plain_criterion(), sees_primary=True)})


def padded_group(seed=4, fill=0.0):
    """A group of 3 queries for image 0 and 1 for image 1, padded to 3 with ``fill``."""
    full = random_decoder_queries(2, 3, seed=seed, static_position=True)
    counts = [3, 1]
    content, valid = pad_per_image([full.content[b, :n] for b, n in enumerate(counts)])
    reference, _ = pad_per_image([full.reference[b, :n] for b, n in enumerate(counts)])
    position, _ = pad_per_image([full.position[b, :n] for b, n in enumerate(counts)])
    pad = ~valid
    content = content.masked_fill(pad[..., None], fill)
    position = position.masked_fill(pad[..., None], fill)
    reference = torch.where(pad[..., None], torch.full_like(reference, 0.5 if fill == 0 else 0.9), reference)
    return DecoderQueries(content, reference, position, valid), full, counts


def test_padded_queries_change_no_output_and_no_loss(base, state):
    """Per-image group sizes: padding is attended by no query, matched and supervised by no criterion;
    what padded slots hold changes no output of a valid query and no loss; each image's valid group
    queries decode as if the image's group had only them."""
    t = base.transformer
    primary = random_decoder_queries(2, 5, seed=1, static_position=True)
    targets = targets_of(base, synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    outs, losses = [], []
    for fill in (0.0, 7.0):
        group, full, counts = padded_group(fill=fill)
        assert torch.equal(group.valid, torch.tensor([[True, True, True], [True, False, False]]))
        with torch.no_grad():
            out = t.decode(primary, state, groups={"g": QueryGroup(group, base.criterion)})
            terms, indices = base.criterion(out.groups["g"][-1].logits, out.groups["g"][-1].boxes, targets, 2.0, valid=group.valid)
        outs.append(out)
        losses.append(terms)
        assert torch.equal(out.groups["g"][-1].valid, group.valid)
        for b, (q, _) in enumerate(indices):
            assert group.valid[b, q].all()  # never a padded query
    valid = outs[0].groups["g"][0].valid
    for a, b in zip(outs[0].groups["g"] + outs[0].layers, outs[1].groups["g"] + outs[1].layers):
        rows = valid if a.hidden.shape[1] == 3 else torch.ones(a.hidden.shape[:2], dtype=torch.bool)
        for field in ("hidden", "logits", "boxes"):
            torch.testing.assert_close(getattr(a, field)[rows], getattr(b, field)[rows], rtol=0, atol=0)
    for k in losses[0]:
        torch.testing.assert_close(losses[0][k], losses[1][k], rtol=0, atol=0)
    # Image 1's single valid query decodes as a one-query group of that image.
    one_state = image_state(state, 1)
    single = DecoderQueries(full.content[1:, :1], full.reference[1:, :1], full.position[1:, :1])
    with torch.no_grad():
        alone = t.decode(single, one_state)
    torch.testing.assert_close(outs[0].groups["g"][-1].hidden[1, :1], alone.layers[-1].hidden[0], rtol=0, atol=1e-5)


class FixedGroupSource(nn.Module):
    """A method-side group source: one group of the primary queries' copies with a fixed assignment
    (query 0 -> GT 0, query 1 -> GT 1 of image 0), as a denoising group knows its targets."""

    def __init__(self, requires_teacher=False):
        super().__init__()
        self.requires_teacher = requires_teacher
        self.criterion = SetCriterion(OneToManyMatcher(topk=2), loss_weights={"class": 1.0, "bbox": 1.0, "giou": 1.0})
        self.calls = 0
        self.seen_teacher = None

    def forward(self, batch):
        self.calls += 1
        self.seen_teacher = batch.teacher
        q = batch.selection.queries
        empty = torch.empty(0, dtype=torch.long)
        indices = [(torch.tensor([0, 1]), torch.tensor([0, 1])), (empty, empty)]
        return {"": QueryGroup(DecoderQueries(q.content[:, :4] + 1.0, q.reference[:, :4], None if q.position is None else q.position[:, :4]),
                               self.criterion, indices=indices, loss_scale=0.5)}


def model_with_groups(base, source):
    cfg = tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES)
    model = build(cfg, seed=5)
    model.load_state_dict(base.state_dict())
    model.group_sources["fixed"] = source
    return model


def test_query_group_losses_use_their_prefix_criterion_and_fixed_assignment(base):
    source = FixedGroupSource()
    model = model_with_groups(base, source)
    model.eval()  # deterministic; training_losses runs whatever the mode
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    with torch.no_grad():
        losses, matching = model.training_losses(batch)
        _, state, selection = model.encode_and_select(batch)
        group = source(type("B", (), {"selection": selection, "teacher": None})())[""]
        out = model.transformer.decode(selection.queries, state, groups={"fixed": group})
        plain = model.transformer.decode(selection.queries, state)
    keys = {f"fixed/loss_{term}_{i}" for term in ("class", "bbox", "giou") for i in range(DEC_LAYERS)}
    assert keys <= set(losses) and set(losses) - keys == set(primary_losses(losses))
    targets = targets_of(model, batch)
    for i, layer in enumerate(out.groups["fixed"]):
        expected, _ = source.criterion(layer.logits, layer.boxes, targets, 2.0, indices=group.indices)
        for k, v in expected.items():
            torch.testing.assert_close(losses[f"fixed/{k}_{i}"], 0.5 * v)
        assert [(q.tolist(), g.tolist()) for q, g in matching["fixed"][i]] == [(q.tolist(), g.tolist()) for q, g in group.indices]
    # The primary losses are the model's without the group (the group is masked away).
    assert_layers_close(out, plain)


# --- 2. decoder variants -------------------------------------------------------------------------------
def layer_blocks(decoder):
    blocks = {}
    for i, layer in enumerate(decoder.layers):
        blocks[f"sa{i}"], blocks[f"ca{i}"] = layer.self_attn, layer.cross_attn
    return blocks


def test_own_ffn_variant_losses_shared_work_and_gradients(base):
    model = model_with_variants(base, aux=variant_cfg(OwnFFNVariant))
    model.train()
    variant = model.variants["aux"]
    assert isinstance(variant, TrainingVariant) and all(isinstance(v, OwnFFNVariant) for v in variant.layer_variants)
    decoder = model.transformer.decoder
    with CallCounter(layer_blocks(decoder)) as calls:
        losses = model(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    # Self- and cross-attention run once per layer although the primary queries and the variant read them.
    assert all(n == 1 for n in calls.counts.values()), calls.counts
    aux_keys = {f"aux/loss_{term}_{i}" for term in ("class", "bbox", "giou") for i in range(DEC_LAYERS)}
    assert aux_keys <= set(losses) and set(losses) - aux_keys == set(primary_losses(losses))
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(primary_losses(losses)) == 9  # (class, bbox, giou) x (layer 0, last layer, encoder)

    primary = sum(primary_losses(losses).values())
    aux = sum(v for k, v in losses.items() if k.startswith("aux/"))
    variant_params = list(variant.parameters())
    last_shared_ffn = list(decoder.layers[-1].ffn.ffn.parameters())
    last_shared_norm = list(decoder.layers[-1].ffn.norm.parameters())
    grads = torch.autograd.grad(primary, variant_params + last_shared_norm, retain_graph=True, allow_unused=True)
    assert all(g is None for g in grads[: len(variant_params)]), "primary losses must not reach the variant's FFN"
    assert all(g is not None and g.abs().sum() > 0 for g in grads[len(variant_params):])
    grads = torch.autograd.grad(aux, variant_params + last_shared_ffn + last_shared_norm, allow_unused=True)
    own, shared_ffn, shared_norm = grads[: len(variant_params)], grads[len(variant_params): -2], grads[-2:]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in own)
    assert all(g is None for g in shared_ffn), "the variant uses its own FFN weights, not the shared ones"
    assert all(g is not None and g.abs().sum() > 0 for g in shared_norm), "the residual norm is shared"


def test_variant_with_its_own_blocks(base, state):
    """``OwnBlocksVariant``: a variant's own cross-attention (or self-attention, FFN) replaces the
    layer's for its stream only: its output is shared SA -> own CA -> shared FFN; the primary output
    is unchanged; with own blocks copied from the layer's it equals the primary output; the shared
    cross-attention still runs once over the consumers that share it."""
    layer = base.transformer.decoder.layers[0]
    d = base.transformer.decoder.d_model
    query = torch.randn(2, 6, d)
    points = torch.rand(2, 6, 2)
    context = base.transformer.decoder.context_of(QueryStream(query, points, points, torch.randn(2, 6, d)), state)
    msda = layer.cross_attn.attn
    own_ca = OwnBlocksVariant(("cross_attn",), d, 64, num_heads=msda.num_heads, num_levels=msda.num_levels, num_points=msda.num_points)
    own_sa_ffn = OwnBlocksVariant(("self_attn", "ffn"), d, layer.ffn.ffn.linear1.out_features, num_heads=msda.num_heads)
    inputs = LayerInputs({PRIMARY: Stream(query, context)}, {"ca": own_ca, "saffn": own_sa_ffn})
    with torch.no_grad(), CallCounter({"cross_attn": layer.cross_attn}) as calls:
        out = layer(inputs)
        assert calls.counts["cross_attn"] == 1
        primary = layer.ffn(layer.cross_attn(layer.self_attn(query, context), context), context)
        torch.testing.assert_close(out.hidden, primary, rtol=0, atol=1e-5)
        expected = layer.ffn(own_ca.own["cross_attn"](layer.self_attn(query, context), context), context)
        torch.testing.assert_close(out.variants["ca"], expected, rtol=0, atol=1e-5)
        assert (out.variants["ca"] - out.hidden).abs().max() > 1e-3
        expected = own_sa_ffn.own["ffn"](layer.cross_attn(own_sa_ffn.own["self_attn"](query, context), context), context)
        torch.testing.assert_close(out.variants["saffn"], expected, rtol=0, atol=1e-5)
        own_ca.own["cross_attn"].load_state_dict(layer.cross_attn.state_dict())
        torch.testing.assert_close(layer(inputs).variants["ca"], out.hidden, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="expected one or more of"):
        OwnBlocksVariant(("norm",))


def test_share_all_variant_equals_primary(base, features):
    same = TrainingVariant([LayerVariant() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion))
    t = base.transformer
    with torch.no_grad():
        out, _, _ = t(*features, variants={"same": same})
    assert list(out.variants) == ["same"] and len(out.variants["same"]) == DEC_LAYERS
    for primary, varied in zip(out.layers, out.variants["same"]):
        for field in ("hidden", "logits", "boxes", "reference"):
            torch.testing.assert_close(getattr(varied, field), getattr(primary, field), rtol=0, atol=0)
    # A variant that skips a layer (None) gets no prediction there.
    partial = TrainingVariant([None, LayerVariant()], copy.deepcopy(base.criterion))
    with torch.no_grad():
        out, _, _ = t(*features, variants={"partial": partial})
    assert out.variants["partial"][0] is None and out.variants["partial"][1] is not None


def test_own_self_attention_variant_batches_cross_attention(base, features):
    torch.manual_seed(0)
    variant = TrainingVariant([InstructionTokenVariant() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion))
    ffn_variant = TrainingVariant([OwnFFNVariant() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion))
    t = base.transformer
    captured = []
    handle = t.decoder.layers[1].cross_attn.register_forward_hook(lambda m, args, out: captured.append((args, out)))
    try:
        with torch.no_grad(), CallCounter(layer_blocks(t.decoder)) as calls:
            routed, _, _ = t(*features, variants={"sa": variant, "ffn": ffn_variant})
        assert all(n == 1 for n in calls.counts.values()), calls.counts
        with torch.no_grad():
            plain, _, _ = t(*features)
    finally:
        handle.remove()
    # One cross-attention call over primary + variant queries (batched along the query axis).
    (query_in, context), crossed = captured[0]
    assert query_in.shape == (2, 2 * NUM_QUERIES, D_MODEL) and context.reference_points.shape[1] == 2 * NUM_QUERIES
    # The primary queries' predictions are exactly what they are without variants.
    assert_layers_close(routed, plain)
    # The variant's part of the batched call equals a separate cross-attention call on it.
    with torch.no_grad():
        single_context = QueryContext(**{**vars(context), "query_pos": context.query_pos[:, NUM_QUERIES:],
                                         "reference_points": context.reference_points[:, NUM_QUERIES:]})
        alone = t.decoder.layers[1].cross_attn(query_in[:, NUM_QUERIES:], single_context)
        torch.testing.assert_close(crossed[:, NUM_QUERIES:], alone, rtol=0, atol=1e-5)
        # ... and the variant's SA output really is the token-prefixed attention, not the shared one.
        assert (query_in[:, NUM_QUERIES:] - query_in[:, :NUM_QUERIES]).abs().max() > 1e-3
    sa_predictions = routed.variants["sa"]
    assert len(sa_predictions) == DEC_LAYERS and all(p.logits.shape == (2, NUM_QUERIES, NUM_CLASSES) for p in sa_predictions)
    assert (sa_predictions[-1].logits - routed.layers[-1].logits).abs().max() > 1e-4
    # The variant's predictions = shared FFN + shared heads on its cross-attention output.
    layer, decoder = t.decoder.layers[1], t.decoder
    with torch.no_grad():
        hidden = layer.ffn(crossed[:, NUM_QUERIES:], context)
        torch.testing.assert_close(sa_predictions[1].hidden, hidden, rtol=0, atol=1e-6)
        torch.testing.assert_close(sa_predictions[1].logits, decoder.class_heads[1](hidden), rtol=0, atol=1e-6)


def test_own_stream_variant_is_a_full_pass_with_its_modules(base, features):
    """``own_stream=True``: the variant predicts exactly what the decoder predicts with the variant's
    modules in place of the shared ones, starting from the same queries and boxes (a full pass
    through the weight-shared decoder), while the primary queries' predictions are unchanged. Layer 0's shared
    self-attention (same input for both) runs once; cross-attention stays one call per layer."""
    torch.manual_seed(1)
    t = copy.deepcopy(base.transformer)
    with torch.no_grad():  # box heads start at zero (boxes = references): let the streams' boxes move
        for head in t.decoder.box_heads:
            head.layers[-1].weight.normal_(0, 0.05)
    variant = TrainingVariant([OwnFFNVariant() for _ in range(DEC_LAYERS)], copy.deepcopy(base.criterion), own_stream=True)
    with torch.no_grad(), CallCounter(layer_blocks(t.decoder)) as calls:
        routed, _, _ = t(*features, variants={"ffn": variant})
    assert calls.counts == {"sa0": 1, "ca0": 1, "sa1": 2, "ca1": 1}
    with torch.no_grad():
        plain, _, _ = t(*features)
    assert_layers_close(routed, plain)
    alone = copy.deepcopy(t)  # the decoder with the variant's FFNs
    for layer, layer_variant in zip(alone.decoder.layers, variant.layer_variants):
        layer.ffn.ffn.load_state_dict(layer_variant.own_ffn.state_dict())
    with torch.no_grad():
        expected, _, _ = alone(*features)
    for got, want in zip(routed.variants["ffn"], expected.layers):
        for field in ("hidden", "logits", "boxes", "reference"):
            torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=1e-5, msg=field)
    assert (routed.variants["ffn"][1].reference - plain.layers[1].reference).abs().max() > 1e-4
    with pytest.raises(ValueError, match="own_stream"):
        TrainingVariant([None, OwnFFNVariant()], copy.deepcopy(base.criterion), own_stream=True)


def test_variant_with_its_own_query_selection(base):
    """``TrainingVariant(query_selection=VariantQuerySelection)`` (Mr. DETR's Route-3): the variant decodes
    exactly what the model decodes with the variant's proposal heads in place of its own (its own
    top-k, boxes and positions; shared content queries), the primary queries are unchanged, and the
    variant's selection has its own encoder loss, which trains its heads and not the primary ones."""
    from detr_plus.modeling import VariantQuerySelection

    torch.manual_seed(3)
    num_proposal_classes = base.transformer.enc_class_head.out_features
    selection = VariantQuerySelection(D_MODEL, num_proposal_classes)
    with torch.no_grad():  # heads that disagree with the primary ones
        selection.class_head.weight.normal_(0, 0.5)
        selection.box_head.layers[-1].weight.normal_(0, 0.05)
    variant = L(TrainingVariant)(layer_variants=[L(LayerVariant)() for _ in range(DEC_LAYERS)], criterion=o2m_criterion(),
                                 own_stream=True, query_selection=selection)
    model = model_with_variants(base, own=variant)
    model.variants["own"].query_selection.load_state_dict(selection.state_dict())
    swapped = copy.deepcopy(base)  # the baseline whose proposal heads are the variant's
    swapped.transformer.enc_class_head.load_state_dict(selection.class_head.state_dict())
    swapped.transformer.enc_box_head.load_state_dict(selection.box_head.state_dict())
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    model.eval(), swapped.eval()  # no dropout; training_losses runs the training path anyway
    losses, matching = model.training_losses(batch)
    base_losses, _ = base.training_losses(batch)
    swapped_losses, swapped_matching = swapped.training_losses(batch)
    with torch.no_grad():
        _, state, own = swapped.encode_and_select(batch)
        _, _, primary = base.encode_and_select(batch)
        expected = swapped.transformer.decode(own.queries, state)
    assert not torch.equal(own.topk_indices, primary.topk_indices)
    for k, v in base_losses.items():  # the primary queries' losses and their encoder loss are the baseline's
        torch.testing.assert_close(losses[k], v, rtol=0, atol=1e-5, msg=k)
    for term in ("class", "bbox", "giou"):  # the variant's encoder loss is the swapped model's primary one
        torch.testing.assert_close(losses[f"own/loss_{term}_enc"], swapped_losses[f"loss_{term}_enc"], rtol=0, atol=1e-5)
    assert [q.tolist() for q, _ in matching["own/enc"][0]] == [q.tolist() for q, _ in swapped_matching["enc"][0]]
    out = model.transformer.decode(*_variant_start(model, batch))
    for got, want in zip(out.variants["own"], expected.layers):
        for field in ("logits", "boxes", "reference"):
            torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=1e-5, msg=field)
    enc_loss = sum(v for k, v in losses.items() if k.startswith("own/") and k.endswith("_enc"))
    own_heads = list(model.variants["own"].query_selection.parameters())
    primary_heads = list(model.transformer.enc_class_head.parameters()) + list(model.transformer.enc_box_head.parameters())
    grads = torch.autograd.grad(enc_loss, own_heads + primary_heads, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads[: len(own_heads)])
    assert all(g is None for g in grads[len(own_heads):])
    with pytest.raises(ValueError, match="own_stream"):
        TrainingVariant([LayerVariant()], o2m_criterion(), query_selection=selection)


def _variant_start(model, batch):
    """(primary queries, state, variants, groups, variant_queries) of the model's training decode."""
    with torch.no_grad():
        _, state, primary = model.encode_and_select(batch)
        own = model.variants["own"].query_selection(model.transformer, state)
    return primary.queries, state, model.variants, None, {"own": own.queries}


def test_encoder_loss_matched_on_the_anchors_without_class_cost(base):
    """``enc_anchor_matcher=HungarianMatcher(cost_class=0)`` (Mr. DETR's public code): the encoder
    loss's pairs are the assignment of the proposal anchors to the GTs by 5 L1 - 2 GIoU alone, found
    here by brute force over every pair of valid tokens, and the box loss regresses the encoder's
    predictions at exactly those tokens."""
    from torchvision.ops import generalized_box_iou

    from detr_plus.layers.box_ops import box_cxcywh_to_xyxy
    from detr_plus.modeling import HungarianMatcher

    cfg = tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES)
    cfg.enc_anchor_matcher = L(HungarianMatcher)(cost_class=0.0)
    model = build(cfg, seed=0)
    model.load_state_dict(base.state_dict())
    torch.manual_seed(7)
    with torch.no_grad():  # predictions away from their anchors, so the two matchings can differ
        model.transformer.enc_box_head.layers[-1].weight.normal_(0, 0.5)
    by_predictions = copy.deepcopy(model)
    by_predictions.enc_anchor_matcher = None
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    losses, matching = model.training_losses(batch)
    targets = targets_of(model, batch)
    with torch.no_grad():
        _, _, selection = model.encode_and_select(batch)
    enc = selection.encoder_predictions
    valid = enc["valid"][0].nonzero().flatten()
    anchors, gt = enc["anchors"][0, valid], targets[0]["boxes"]
    cost = 5 * torch.cdist(anchors, gt, p=1) - 2 * generalized_box_iou(box_cxcywh_to_xyxy(anchors), box_cxcywh_to_xyxy(gt))
    total = cost[:, 0, None] + cost[None, :, 1]
    total.fill_diagonal_(float("inf"))
    best = divmod(int(total.argmin()), len(valid))
    queries, gts = matching["enc"][0][0]
    assert sorted(zip(gts.tolist(), queries.tolist())) == [(0, int(valid[best[0]])), (1, int(valid[best[1]]))]
    l1 = (enc["boxes"][0, queries] - gt[gts]).abs().sum()
    num_boxes = 2.0
    torch.testing.assert_close(losses["loss_bbox_enc"], model.enc_loss_weight * 5.0 * l1 / num_boxes)
    _, default_matching = by_predictions.training_losses(batch)
    assert default_matching["enc"][0][0][0].tolist() != queries.tolist()  # the predictions match elsewhere


# --- 3. layer wrappers, gather / scatter, updated mask, extra outputs ----------------------------------
def test_query_subset_round_trip_with_unequal_counts():
    """scatter(gather(Q)) puts every row back at its index; only valid rows are written; the padding
    slots of an image with fewer selected queries are never written back."""
    mask = torch.tensor([[True, False, True, True, False], [False, True, False, False, False], [False] * 5])
    subset = QuerySubset.of(mask)
    assert subset.size == 3 and subset.padded
    assert subset.index[0].tolist() == [0, 2, 3] and subset.index[1, 0] == 1
    assert subset.valid.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert all(len(set(row.tolist())) == 3 for row in subset.index)  # distinct positions per image
    x = torch.arange(3 * 5 * 2, dtype=torch.float32).view(3, 5, 2)
    assert torch.equal(subset.scatter(x, subset.gather(x)), x)
    processed = torch.full((3, 3, 2), float("nan"))
    processed[subset.valid] = -1.0
    out = subset.scatter(x, processed)
    assert not torch.isnan(out).any()  # padded rows (NaN here) are never written
    assert torch.equal(out[mask], torch.full((int(mask.sum()), 2), -1.0)) and torch.equal(out[~mask], x[~mask])


def test_context_select():
    context = QueryContext(query_pos=torch.arange(2 * 4 * 3.0).view(2, 4, 3), reference_points=torch.arange(2 * 4 * 2 * 4.0).view(2, 4, 2, 4),
                           memory=torch.zeros(2, 5, 3), spatial_shapes=torch.tensor([[1, 5]]), level_start_index=torch.tensor([0]),
                           self_attn_mask=group_attention_mask([2, 2]))
    index = torch.tensor([[3, 1], [0, 2]])
    picked = context.select(index)
    torch.testing.assert_close(picked.query_pos, torch.stack([context.query_pos[0, [3, 1]], context.query_pos[1, [0, 2]]]))
    torch.testing.assert_close(picked.reference_points, torch.stack([context.reference_points[0, [3, 1]], context.reference_points[1, [0, 2]]]))
    assert picked.memory is context.memory and picked.query_padding_mask is None
    # The group mask's rows and columns follow the queries, per image: [3, 1] are in different groups.
    assert torch.equal(picked.self_attn_mask, torch.tensor([[[False, True], [True, False]], [[False, True], [True, False]]]))
    # A padded subset marks its padding; the attention mask then blocks padded keys but lets a padded
    # query see itself (no fully blocked row).
    subset = QuerySubset.of(torch.tensor([[True, True, False, True], [False, False, True, False]]))
    picked = context.select(subset)
    assert torch.equal(picked.query_padding_mask, ~subset.valid)
    mask = picked.attention_mask(num_heads=2)
    assert mask.shape == (4, 3, 3) and not mask.all(-1).any()
    assert torch.equal(mask[2], torch.tensor([[False, True, True], [True, False, True], [True, True, False]]))


class RouteLayer(nn.Module):
    """A QR-DETR-style whole-layer wrapper built by the decoder's ``layer_wrapper``: only the queries
    ``choose(query)`` selects (a (B, Q) mask) pass through the layer; the rest keep their query and box."""

    def __init__(self, layer, choose):
        super().__init__()
        self.layer, self.choose = layer, choose

    def forward(self, inputs):
        query, context = inputs.primary.query, inputs.primary.context
        chosen = self.choose(query)
        subset = QuerySubset.of(chosen)
        inner = self.layer(LayerInputs({PRIMARY: Stream(subset.gather(query), context.select(subset))}))
        return LayerOutput(subset.scatter(query, inner.hidden), updated=chosen,
                           extras={"passed": chosen.sum(1)})


def as_wrapped(state_dict):
    """A plain transformer's state dict under ``RouteLayer``'s names (the layer is ``.layer``)."""
    return {re.sub(r"^decoder\.layers\.(\d+)\.", r"decoder.layers.\1.layer.", k): v for k, v in state_dict.items()}


def wrapped_transformer(choose, name="plusplus", seed=0):
    cfg = tiny_model_config(name, dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES)
    cfg.transformer.decoder.layer_wrapper = lambda layer, index: RouteLayer(layer, choose)
    return build(cfg, seed=seed).transformer


def every_query(query):
    return torch.ones(query.shape[:2], dtype=torch.bool)


def test_wrapper_that_routes_every_query_equals_the_plain_layer(base, state):
    t = wrapped_transformer(every_query)
    t.load_state_dict(as_wrapped(base.transformer.state_dict()))
    assert isinstance(t.decoder.layers[0], RouteLayer)  # built by the factory, not replaced afterwards
    queries = random_decoder_queries(2, 10, seed=3, static_position=True)
    with torch.no_grad():
        routed = t.decode(queries, state)
        plain = base.transformer.decode(queries, state)
    assert_layers_close(routed, plain, atol=0)
    assert routed.layers[0].extras["passed"].tolist() == [10, 10]


def choose_by_image(query):
    """Image 0: the 6 even queries; image 1: queries 1 and 4 (unequal counts: padding in image 1)."""
    chosen = torch.zeros(query.shape[:2], dtype=torch.bool)
    chosen[0, ::2] = True
    chosen[1, [1, 4]] = True
    return chosen


def test_wrapped_layer_with_unequal_counts_and_updated_mask(base, state):
    """Selected queries are processed as if decoded alone; bypassed ones keep their query and box
    (``updated`` False: not refined by that layer's head); the next layer runs on all queries."""
    t = wrapped_transformer(choose_by_image)
    t.load_state_dict(as_wrapped(base.transformer.state_dict()))
    with torch.no_grad():  # non-zero box heads, so refinement moves boxes
        for head in t.decoder.box_heads:
            head.layers[-1].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    queries = random_decoder_queries(2, 10, seed=4, static_position=True)
    with torch.no_grad():
        out = t.decode(queries, state)
    chosen = choose_by_image(queries.content)
    first = out.layers[0]
    assert torch.equal(first.updated, chosen)
    torch.testing.assert_close(first.hidden[~chosen], queries.content[~chosen], rtol=0, atol=0)
    torch.testing.assert_close(first.boxes[~chosen], queries.reference[~chosen], rtol=0, atol=0)  # kept its box
    torch.testing.assert_close(out.layers[1].reference[~chosen], queries.reference[~chosen], rtol=0, atol=0)
    assert (first.boxes[chosen] - queries.reference[chosen]).abs().max() > 1e-4  # the processed ones are refined
    layer0 = t.decoder.layers[0].layer
    for b in range(2):  # reference: each image's chosen queries through the plain layer, alone
        index = chosen[b].nonzero().flatten()
        one = DecoderQueries(queries.content[b : b + 1, index], queries.reference[b : b + 1, index], queries.position[b : b + 1, index])
        context = t.decoder.context_of(QueryStream(one.content, one.reference, one.reference, one.position), image_state(state, b))
        with torch.no_grad():
            alone = layer0(LayerInputs({PRIMARY: Stream(one.content, context)})).hidden
        torch.testing.assert_close(first.hidden[b, index], alone[0], rtol=0, atol=1e-5)


class ExitHeadLayer(nn.Module):
    """A wrapper adding extra per-layer predictions (QR-DETR's exit heads) for a criterion."""

    def __init__(self, layer, index):
        super().__init__()
        self.layer = layer
        self.exit_class = nn.Linear(D_MODEL, NUM_CLASSES)

    def forward(self, inputs):
        out = self.layer(inputs)
        context = inputs.primary.context
        exit_predictions = LayerPredictions(self.exit_class(out.hidden), context.reference_points[:, :, 0].clamp(0, 1), out.hidden,
                                            context.reference_points[:, :, 0])
        out.extras["exit"] = exit_predictions
        return out


def test_extra_layer_outputs_are_supervised_by_their_criterion(base):
    cfg = tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES)
    cfg.transformer.decoder.layer_wrapper = ExitHeadLayer
    cfg.extra_output_criteria = L(named_modules)(exit=o2m_criterion())
    model = build(cfg, seed=2)
    model.eval()
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    with torch.no_grad():
        losses, matching = model.training_losses(batch)
        _, state, selection = model.encode_and_select(batch)
        out = model.transformer.decode(selection.queries, state)
    targets = targets_of(model, batch)
    for i, layer in enumerate(out.layers):
        extra = layer.extras["exit"]
        expected, indices = model.extra_output_criteria["exit"](extra.logits, extra.boxes, targets, 2.0)
        for k, v in expected.items():
            torch.testing.assert_close(losses[f"exit/{k}_{i}"], v)
    assert len(matching["exit"]) == DEC_LAYERS
    losses_sum = sum(v for k, v in losses.items() if k.startswith("exit/"))
    grads = torch.autograd.grad(sum(model.training_losses(batch)[0][k] for k in losses if k.startswith("exit/")),
                                [layer.exit_class.weight for layer in model.transformer.decoder.layers])
    assert losses_sum > 0 and all(g.abs().sum() > 0 for g in grads)  # the exit heads train end to end


# --- 4. external queries -----------------------------------------------------------------------------
# --- 4. external queries -----------------------------------------------------------------------------
def test_external_queries(base, state):
    t = base.transformer
    queries = random_decoder_queries(2, 7, seed=6, static_position=True)
    other = random_decoder_queries(2, 7, seed=7, static_position=True)
    queries.content.requires_grad_()
    for mode in ("eval", "train"):  # the ++ config has dropout 0: deterministic in both modes
        getattr(t, mode)()
        first = t.decode(queries, state)
        second = t.decode(queries, state)
        assert isinstance(first, DecoderOutput) and len(first.layers) == DEC_LAYERS and first.variants == {} and first.groups == {}
        for a, b in zip(first.layers, second.layers):
            assert isinstance(a, LayerPredictions)
            assert a.logits.shape == (2, 7, NUM_CLASSES) and a.boxes.shape == (2, 7, 4)
            assert a.hidden.shape == (2, 7, D_MODEL) and a.reference.shape == (2, 7, 4)
            for field in ("hidden", "logits", "boxes", "reference"):
                assert torch.equal(getattr(a, field), getattr(b, field)), field
        torch.testing.assert_close(first.layers[0].reference, queries.reference)
    t.eval()
    # The result depends on the given content, and the given content is not detached.
    with torch.no_grad():
        other_out = t.decode(DecoderQueries(other.content, queries.reference, queries.position), state)
    assert (other_out.layers[-1].logits - first.layers[-1].logits).abs().max() > 1e-4
    (grad,) = torch.autograd.grad(first.layers[-1].logits.sum(), queries.content)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="position"):  # static-position decoder, queries without one
        t.decode(DecoderQueries(queries.content.detach(), queries.reference), state)


# --- 5. per-layer outputs and matching indices -------------------------------------------------------
def test_per_layer_outputs_and_matching_indices(base, features):
    from detr_plus.layers.box_ops import inverse_sigmoid

    t = base.transformer
    with torch.no_grad():
        out, selection, _ = t(*features)
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
    torch.testing.assert_close(out.layers[0].reference, selection.queries.reference)

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


class RecordingCriterion(SetCriterion):
    """An o2m criterion that records the one-to-one pairs the context gives it for its layer."""

    seen = []

    def forward(self, logits, boxes, targets, num_boxes, indices=None, valid=None, context=None):
        RecordingCriterion.seen.append((context.layer, context.matching["primary"][context.layer]))
        return super().forward(logits, boxes, targets, num_boxes, indices, valid, context)


def test_variant_criteria_read_their_layers_primary_matching(base):
    """``LossContext.matching`` holds, for a variant's layer i, the pairs the primary criterion matched at layer i."""
    criterion = L(RecordingCriterion)(matcher=L(OneToManyMatcher)(topk=3))
    model = model_with_variants(base, aux=variant_cfg(OwnFFNVariant, criterion=criterion))
    model.train()
    RecordingCriterion.seen.clear()
    _, matching = model.training_losses(synthetic_batch(sizes=SMALL_IMAGE_SIZES))
    assert [layer for layer, _ in RecordingCriterion.seen] == list(range(DEC_LAYERS))
    for layer, pairs in RecordingCriterion.seen:
        assert pairs is matching["primary"][layer]
        assert len(pairs[0][0]) == 2  # image 0's two GTs, one query each


# --- 6. the EMA teacher ------------------------------------------------------------------------------
def test_teacher_pass_exposes_each_stage_and_its_assignment(base):
    teacher = ModelEMA(base, decay=0.9).module
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    pass_ = teacher.detection_pass(batch)
    targets = targets_of(base, batch)
    assert pass_.selection.topk_indices.shape == (2, NUM_QUERIES)  # two-stage: a student can take the same proposals
    assert len(pass_.decoder.layers) == len(pass_.matching) == DEC_LAYERS
    for layer, indices in zip(pass_.decoder.layers, pass_.matching):
        assert not layer.hidden.requires_grad and not layer.boxes.requires_grad
        expected = base.criterion.matcher(layer.logits, layer.boxes, targets)
        for (q, g), (eq, eg) in zip(indices, expected):
            assert torch.equal(q, eq) and torch.equal(g, eg)
    assert not pass_.selection.queries.content.requires_grad
    assert teacher.detection_pass(synthetic_batch(with_instances=False, sizes=SMALL_IMAGE_SIZES)).matching is None


def test_teacher_forward_has_no_gradient_and_leaves_the_student_unchanged():
    """A model whose group source reads the teacher runs the teacher pass on the same batch: without
    gradient, and without touching the student's outputs or RNG stream (dropout is on here: the
    published model has dropout 0.1, so any extra draw would change the student's losses)."""
    cfg = tiny_model_config("plain", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES)
    student = build(cfg, seed=0)
    student.group_sources["fixed"] = FixedGroupSource(requires_teacher=False)
    student.train()
    batch = synthetic_batch(sizes=SMALL_IMAGE_SIZES)
    torch.manual_seed(7)
    reference = student.training_losses(batch)[0]
    rng_after_reference = torch.get_rng_state()

    student.group_sources["fixed"].requires_teacher = True
    assert student.requires_teacher
    with pytest.raises(RuntimeError, match="teacher"):
        student.training_losses(batch)
    ema = ModelEMA(student, decay=0.9)
    student.attach_teacher(ema.module)
    assert "teacher" not in dict(student.named_children()) and not any("teacher" in k for k in student.state_dict())
    torch.manual_seed(7)
    losses = student.training_losses(batch)[0]
    assert torch.equal(torch.get_rng_state(), rng_after_reference)
    for k in reference:
        torch.testing.assert_close(losses[k], reference[k], rtol=0, atol=0)
    seen = student.group_sources["fixed"].seen_teacher
    assert seen is not None and len(seen.matching) == DEC_LAYERS
    sum(losses.values()).backward()
    assert all(p.grad is None for p in ema.module.parameters())
    assert copy.deepcopy(student).teacher is None  # copying the student does not copy its teacher


# --- 7. inference ignores training-only parts ----------------------------------------------------------
def test_inference_ignores_variants_and_stripped_checkpoint_loads(base, features):
    model = model_with_variants(base, aux=variant_cfg(OwnFFNVariant), sa=variant_cfg(InstructionTokenVariant))
    source = FixedGroupSource()
    source.token = nn.Parameter(torch.zeros(3))  # a group source with parameters (DINO's label embedding, say)
    model.group_sources["fixed"] = source
    variant_modules = {f"{name}:{sub}": m for name, variant in model.variants.items() for sub, m in variant.named_modules()}
    batch = synthetic_batch(with_instances=False, size_scale=2, sizes=SMALL_IMAGE_SIZES)

    # In training the variant modules run (so the counters below can see them) ...
    model.train()
    with torch.no_grad(), CallCounter(variant_modules) as calls:
        model.transformer(*features, variants=model.variants)
    assert calls.counts["aux:layer_variants.0.own_ffn"] == 1 and calls.counts["sa:layer_variants.1.norm"] == 1
    # ... in eval mode they never do, and the outputs are the baseline's.
    model.eval()
    with torch.no_grad(), CallCounter(variant_modules) as calls:
        with_variants = model(batch)
    assert sum(calls.counts.values()) == 0, {k: v for k, v in calls.counts.items() if v}
    assert source.calls == 0  # no query group is made at inference
    with torch.no_grad():
        expected = base(batch)

    def assert_same(results, reference):
        for a, b in zip(results, reference):
            a, b = a["instances"], b["instances"]
            assert a.image_size == b.image_size and len(a) == len(b) > 0
            assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
            assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)

    assert_same(with_variants, expected)

    state_dict = model.state_dict()
    assert any(k.startswith("variants.aux.") for k in state_dict) and any(k.startswith("variants.sa.") for k in state_dict)
    assert "group_sources.fixed.token" in state_dict
    plain = build(tiny_model_config("plusplus", dec_layers=DEC_LAYERS, num_queries=NUM_QUERIES), seed=123)
    with pytest.raises(RuntimeError, match="variants"):
        plain.load_state_dict(state_dict, strict=True)
    plain.load_state_dict(strip_training_parts(state_dict), strict=True)
    plain.eval()
    with torch.no_grad():
        assert_same(plain(batch), with_variants)


def test_training_only_child_is_stripped_wherever_it_sits():
    """A method's training-only modules inside an inference module (a ``training_only`` child, e.g.
    QR-DETR's own exit heads inside its decoder-layer wrappers) leave the stripped state dict like
    ``variants.*`` do; a name that merely contains the word stays."""
    keys = ["transformer.decoder.layers.0.training_only.exit_class_head.weight", "training_only.x",
            "variants.aux.layer_variants.0.ffn.weight", "routes.o2m.branches.1.w", "group_sources.fixed.token",
            "transformer.decoder.layers.0.router.weight", "transformer.decoder.training_only_stats.w",
            "transformer.decoder.class_heads.0.bias"]
    assert [is_training_only(k) for k in keys] == [True, True, True, True, True, False, False, False]
    state = {k: torch.zeros(1) for k in keys}
    assert sorted(strip_training_parts(state)) == ["transformer.decoder.class_heads.0.bias", "transformer.decoder.layers.0.router.weight",
                                                   "transformer.decoder.training_only_stats.w"]
