"""Conditional DETR and DAB-DETR as configurations of the core: the conditional cross-attention and
DAB's width / height modulation against hand-written references, DAB's encoder position scaling by
hand, DAB's detached anchor refinement,
padding that changes no detection, QR-DETR's routing that routes every query equal to the plain
layer, LoRA-DETR's branches on Conditional DETR (the extension points do not depend on the
decoder), and the parameter counts."""
import math
import re

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from detr_plus.engine.compose import compose_methods
from detr_plus.modeling import (ConditionalCrossAttentionBlock, ConditionalSpatialQuery, QueryContext, StandardEncoder,
                                strip_training_parts)
from model_utils import REPO, assert_inference_without_training_parts, build, shrink_model_config, synthetic_batch

MODELS = {"conditional": "configs/models/conditional_detr_r50.py", "dab": "configs/models/dab_detr_r50.py"}


def tiny(name, **overrides):
    model = shrink_model_config(LazyConfig.load(str(REPO / MODELS[name])).model)
    model.update(overrides)
    return model


def test_conditional_cross_attention_by_hand():
    """d 8, 2 heads of 4: per head q = [content ; spatial], k = [content ; position], weight =
    softmax(q . k / sqrt(8)), out = weights @ values; the first layer also adds the projected query
    position to q's content and the key position to k's content."""
    torch.manual_seed(0)
    d, heads, nq, nk = 8, 2, 3, 5
    query, query_pos, spatial = torch.randn(1, nq, d), torch.randn(1, nq, d), torch.randn(1, nq, d)
    memory, memory_pos = torch.randn(1, nk, d), torch.randn(1, nk, d)
    padding = torch.tensor([[False, False, False, False, True]])
    context = QueryContext(query_pos=query_pos, reference_points=None, memory=memory, spatial_shapes=None, level_start_index=None,
                           memory_padding_mask=padding, memory_pos=memory_pos, spatial_query=spatial)
    for first_layer in (True, False):
        block = ConditionalCrossAttentionBlock(d, heads, dropout=0.0, first_layer=first_layer).eval()
        q_c, k_c, v = block.q_content(query)[0], block.k_content(memory)[0], block.value(memory)[0]
        k_p, q_s = block.k_position(memory_pos)[0], block.q_spatial(spatial)[0]
        if first_layer:
            q_c, k_c = q_c + block.q_position(query_pos)[0], k_c + k_p
        out = torch.zeros(nq, d)
        for h in range(heads):
            part = slice(4 * h, 4 * h + 4)
            for i in range(nq):
                scores = [float(q_c[i, part] @ k_c[j, part] + q_s[i, part] @ k_p[j, part]) / math.sqrt(8) for j in range(nk - 1)]
                weights = torch.tensor(scores).softmax(0)  # the padded key takes no part
                out[i, part] = (weights[:, None] * v[: nk - 1, part]).sum(0)
        expected = block.norm(query[0] + block.out_proj(out))
        torch.testing.assert_close(block(query, context)[0], expected, rtol=1e-5, atol=1e-6)
    assert block.q_position is None


def _constant_mlp(mlp, value):
    with torch.no_grad():
        for layer in mlp.layers:
            layer.weight.zero_()
        mlp.layers[-1].bias.copy_(torch.as_tensor(value))
    return mlp


def test_dab_spatial_query_modulation_by_hand():
    """Anchor (cx, cy, w, h) = (0.5, 0.25, 0.2, 0.3), (w_ref, h_ref) = (0.3, 0.6): the y features of the
    sine embedding are scaled by 0.6 / 0.3, the x features by 0.3 / 0.2; after the first layer also by
    lambda (here 2 everywhere)."""
    d, half = 16, 8
    module = ConditionalSpatialQuery(d, modulate_hw=True)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    _constant_mlp(module.reference_size, [logit(0.3), logit(0.6)])
    _constant_mlp(module.scale, [2.0] * d)
    anchor = torch.tensor([[[0.5, 0.25, 0.2, 0.3]]])

    def sine(c):  # feature i: sin / cos (even / odd i) of 2 pi c / 10000^(2 floor(i / 2) / half)
        return [(math.sin if i % 2 == 0 else math.cos)(2 * math.pi * c / 10000 ** (2 * (i // 2) / half)) for i in range(half)]

    expected = [v * 0.6 / 0.3 for v in sine(0.25)] + [v * 0.3 / 0.2 for v in sine(0.5)]
    layer0 = module(torch.randn(1, 1, d), anchor, 0)[0, 0].tolist()
    layer1 = module(torch.randn(1, 1, d), anchor, 1)[0, 0].tolist()
    assert layer0 == pytest.approx(expected, abs=1e-5)
    assert layer1 == pytest.approx([2 * v for v in expected], abs=1e-5)
    plain = ConditionalSpatialQuery(d)
    assert plain(torch.randn(1, 1, d), anchor[..., :2], 0)[0, 0].tolist() == pytest.approx(sine(0.25) + sine(0.5), abs=1e-5)


def test_dab_encoder_scales_each_layers_position_by_an_mlp_of_its_input():
    """DAB-DETR's encoder: layer i attends with pos x MLP(x_i), x_i ITS input (the previous layer's
    output), one MLP for all layers. With both linear layers of the MLP the identity (d 4), MLP(x) =
    relu(x): the first layer, on x = (1, -2, 0.5, 3), sees pos (2, 5, -4, 1) x (1, 0, 0.5, 3) =
    (2, 0, -2, 3); the second sees pos x relu(the first layer's output)."""
    encoder = StandardEncoder(num_layers=2, scale_position=True, d_model=4, d_ffn=8, dropout=0.0, num_heads=1).eval()
    with torch.no_grad():
        for linear in encoder.position_scale.layers:
            linear.weight.copy_(torch.eye(4))
            linear.bias.zero_()
    seen, outputs = [], []

    def record(module, args, out):  # the position the layer attends with, and its output
        seen.append(args[1])
        outputs.append(out)

    for layer in encoder.layers:
        layer.register_forward_hook(record)
    src, pos = torch.tensor([[[1.0, -2.0, 0.5, 3.0]]]), torch.tensor([[[2.0, 5.0, -4.0, 1.0]]])
    with torch.no_grad():
        out = encoder(src, pos, None, None, None, torch.zeros(1, 1, dtype=torch.bool))
    torch.testing.assert_close(seen[0], torch.tensor([[[2.0, 0.0, -2.0, 3.0]]]), rtol=0, atol=0)
    assert (outputs[0] < 0).any() and not torch.equal(outputs[0], src)  # the second layer's scale is not the first's
    torch.testing.assert_close(seen[1], pos * outputs[0].clamp(min=0), rtol=0, atol=0)
    torch.testing.assert_close(out, outputs[1], rtol=0, atol=0)


def test_dab_anchor_refinement_is_detached_and_predictions_look_forward_twice():
    """A layer's input (its anchor, query position and spatial query) has no gradient path to the box
    head through the previous layer's refinement; the layer's predicted boxes do (the official code
    predicts from the previous layer's undetached refinement)."""
    model = build(tiny("dab"))
    model.train()
    with torch.no_grad():
        model.transformer.decoder.box_heads[0].layers[-1].weight.normal_(0, 0.1)
    images, state, selection = model.encode_and_select(synthetic_batch())
    out = model.transformer.decode(selection.queries, state)
    box_head = list(model.transformer.decoder.box_heads[0].parameters())
    hidden_grads = torch.autograd.grad(out.layers[1].hidden.sum(), box_head, allow_unused=True, retain_graph=True)
    assert all(g is None or not g.any() for g in hidden_grads)
    (hidden0_grad,) = torch.autograd.grad(out.layers[1].boxes.sum(), out.layers[0].hidden, retain_graph=True)
    assert hidden0_grad.abs().sum() > 0
    assert model.transformer.decoder.share_heads and model.transformer.decoder.look_forward_twice


def test_conditional_detr_training_gradient_equals_finite_differences(monkeypatch):
    """Nothing on Conditional DETR's path is detached (its official code detaches nothing): in
    float64, a central difference of the summed training loss along a random direction of each
    transformer part (the reference MLP, which the box centres and the spatial queries both read, the
    query embedding, the spatial-query MLP, the decoder layers) equals autograd's directional
    derivative. Dropout off, BatchNorm in eval mode; the matching does not change at this step."""
    monkeypatch.setattr(torch.Tensor, "float", lambda self, *args, **kwargs: self.double())  # losses follow the model's float64
    config = tiny("conditional")
    config.transformer.encoder.dropout = config.transformer.decoder.dropout = 0.0
    model = build(config).double().train()
    model.backbone.eval()
    batch = synthetic_batch()

    def loss():
        return sum(v for k, v in model(batch).items() if k.startswith("loss"))

    loss().backward()
    generator, eps = torch.Generator().manual_seed(0), 1e-6
    for part in ("reference_points", "query_embedding", "decoder.spatial_query", "decoder.layers"):
        params = [p for n, p in model.transformer.named_parameters() if n.startswith(part)]
        directions = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, directions))
        with torch.no_grad():
            values = []
            for sign in (1, -2, 1):  # + eps, - eps, back
                for p, d in zip(params, directions):
                    p.add_(sign * eps * d)
                values.append(float(loss()))
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(analytic) > 1e-3, part
        assert numeric == pytest.approx(analytic, rel=1e-4), part


@pytest.mark.parametrize("name", list(MODELS))
def test_padding_changes_no_output(name):
    """The transformer on an image's feature map, and on the same map padded (random values, masked)
    at the right and bottom: the same logits and boxes (the padded keys take no part, the image
    positions and the boxes are relative to the valid region)."""
    model = build(tiny(name)).eval()
    images, masks = model.preprocess_images(synthetic_batch(with_instances=False)[:1])
    with torch.no_grad():
        _, features, level_masks, positions = model.extract_features(images, masks)
        padded = [torch.cat([torch.cat([f, torch.randn_like(f[..., :2])], -1), torch.randn(*f.shape[:2], 1, f.shape[-1] + 2)], -2)
                  for f in features]
        padded_masks = [torch.nn.functional.pad(m, (0, 2, 0, 1), value=True) for m in level_masks]
        padded_positions = [model.position_embedding(m) for m in padded_masks]
        plain_out = model.transformer(features, level_masks, positions)[0].layers[-1]
        padded_out = model.transformer(padded, padded_masks, padded_positions)[0].layers[-1]
    assert padded[0].shape[-2:] == (features[0].shape[-2] + 1, features[0].shape[-1] + 2)
    torch.testing.assert_close(padded_out.logits, plain_out.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded_out.boxes, plain_out.boxes, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_routing_every_query_equals_the_plain_decoder(name):
    """QR-DETR's combined scheme around the standard-attention blocks with routers that pass every
    query: the same hidden states, logits and boxes as the plain decoder with the same weights."""
    qr_config = LazyConfig.load(str(REPO / f"projects/qr_detr/configs/qr_{name}_detr_shapes_tiny.py"))
    qr_model = shrink_model_config(qr_config.model)
    qr_model.transformer.decoder.layer_wrapper.update(start="pass", d_model=qr_model.transformer.decoder.d_model)
    qr = build(qr_model).eval()
    plain = build(shrink_model_config(LazyConfig.load(str(REPO / f"configs/shapes/{name}_detr_tiny.py")).model)).eval()
    state = {re.sub(r"decoder\.layers\.(\d+)\.layer\.", r"decoder.layers.\1.", k): v
             for k, v in strip_training_parts(qr.state_dict()).items() if ".router." not in k}
    plain.load_state_dict(state, strict=True)
    with torch.no_grad():
        _, s, sel = qr.encode_and_select(synthetic_batch())
        a, b = qr.transformer.decode(sel.queries, s), plain.transformer.decode(sel.queries, s)
    for x, y in zip(a.layers, b.layers):
        for field in ("hidden", "logits", "boxes"):
            assert torch.equal(getattr(x, field), getattr(y, field)), field


def test_lora_detr_on_conditional_detr_trains_and_strips_to_the_baseline():
    delta = LazyConfig.load(str(REPO / "projects/lora_detr/configs/models/lora_detr.py")).lora_detr
    model_cfg = compose_methods(tiny("conditional"), lora_detr=delta)
    model = build(model_cfg).train()
    losses = model(synthetic_batch())
    assert any(k.startswith("aux0/") and v > 0 for k, v in losses.items()) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.variants["aux0"].layer_variants[0].lora_a1.grad is not None
    assert_inference_without_training_parts(model, tiny("conditional"))


def _linear(n_in, n_out):
    return n_in * n_out + n_out


def test_parameter_counts_by_hand():
    """Counted from the architecture (what the official code builds; "44M" in both papers): a ResNet-50
    without its classifier and with frozen BN (buffers, as the official code's), a 1x1 projection, 6
    encoder layers (in-projection 3 x 256^2, out-projection, FFN 2048, 2 norms), 6 decoder layers
    (self-attention: 5 projections + out; cross-attention: 5 + out, the first layer one more; FFN;
    3 norms), the final norm, lambda's MLP, a 3-layer box head and the class head; Conditional DETR
    adds 300 learned positions and the reference MLP; DAB-DETR has 300 x 4 anchors instead, the
    anchors' position MLP (512-256-256), the modulation MLP (256-256-2), the encoder's position-scale
    MLP and 12 PReLU slopes."""
    resnet50 = 23_508_032 - 53_120  # torchvision's count without fc, less the BN affine parameters
    encoder = 6 * (3 * 256 * 256 + 3 * 256 + _linear(256, 256) + _linear(256, 2048) + _linear(2048, 256) + 4 * 256)
    decoder = 6 * (12 * _linear(256, 256) + _linear(256, 2048) + _linear(2048, 256) + 6 * 256) + _linear(256, 256)
    shared = 512 + 2 * _linear(256, 256) + 2 * _linear(256, 256) + _linear(256, 4) + _linear(256, 80)
    conditional = resnet50 + _linear(2048, 256) + encoder + decoder + shared + 300 * 256 + _linear(256, 256) + _linear(256, 2)
    dab = (conditional - 300 * 256 - _linear(256, 256) - _linear(256, 2) + 300 * 4 + 2 * _linear(256, 256) + 12
           + _linear(512, 256) + _linear(256, 256) + _linear(256, 256) + _linear(256, 2))
    for config, expected in (("conditional_detr_r50", conditional), ("dab_detr_r50", dab)):
        model = instantiate(LazyConfig.load(str(REPO / f"configs/models/{config}.py")).model)
        assert sum(p.numel() for p in model.parameters()) == expected, config
    assert (conditional, dab) == (43_415_574, 43_668_690)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_spatial_query_mlps_get_the_transformers_xavier_init(name):
    """The official transformers Xavier-initialise every matrix they hold, the decoder's lambda MLP and
    DAB's width / height MLP included: weights up to sqrt(6 / (256 + 256)) = 0.108, beyond a default
    Linear's bound 1 / sqrt(256) = 0.0625."""
    model = instantiate(LazyConfig.load(str(REPO / MODELS[name])).model)
    spatial = model.transformer.decoder.spatial_query
    matrices = [layer.weight for layer in spatial.scale.layers] + ([] if spatial.reference_size is None else [spatial.reference_size.layers[0].weight])
    for weight in matrices:
        bound = math.sqrt(6 / sum(weight.shape))
        assert 0.0625 < weight.abs().max() <= bound
