"""The shared Deformable-DETR built from the real model configs (sizes made tiny): training losses
and gradients, inference outputs, look-forward-twice, and the learned-anchor (one-stage) variant."""
import pytest
import torch

from model_utils import (
    IMAGE_SIZES,
    NUM_CLASSES,
    assert_finite_grads,
    build,
    build_tiny_model,
    features_of,
    random_queries,
    synthetic_batch,
    targets_of,
    tiny_model_config,
)

DEC_LAYERS = 2


@pytest.fixture(scope="module")
def models():
    return {name: build_tiny_model(name, dec_layers=DEC_LAYERS, num_queries=20) for name in ("plain", "plusplus")}


def expected_loss_keys(num_layers, two_stage=True):
    keys = set()
    for term in ("class", "bbox", "giou"):
        keys.add(f"loss_{term}")
        keys.update(f"loss_{term}_{i}" for i in range(num_layers - 1))
        if two_stage:
            keys.add(f"loss_{term}_enc")
    return keys


def test_configs_keep_their_switches(models):
    plain, plus = models["plain"].transformer, models["plusplus"].transformer
    assert plain.two_stage and not plain.mixed_query_selection
    assert plain.decoder.box_refine and not plain.decoder.look_forward_twice
    assert plus.two_stage and plus.mixed_query_selection
    assert plus.decoder.box_refine and plus.decoder.look_forward_twice
    assert hasattr(plain, "proposal_content") and not hasattr(plain, "query_content")
    assert hasattr(plus, "query_content") and not hasattr(plus, "proposal_content")
    for t in (plain, plus):
        assert t.num_queries == 20 and len(t.decoder.layers) == DEC_LAYERS and len(t.encoder.layers) == 1
        assert t.decoder.class_heads[0].out_features == NUM_CLASSES
        assert t.decoder.class_heads[0] is not t.decoder.class_heads[1]  # box refinement: per-layer heads
    assert plus.decoder.layers[0].ffn.ffn.linear1.out_features == 2 * 128


@pytest.mark.parametrize("name", ["plain", "plusplus"])
def test_training_losses_and_gradients(models, name):
    model = models[name]
    model.train()
    model.zero_grad(set_to_none=True)
    batch = synthetic_batch()
    assert len(batch[1]["instances"]) == 0  # one image without any box
    losses = model(batch)
    assert set(losses) == expected_loss_keys(DEC_LAYERS)
    for key, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), key
        assert value > 0, key
    sum(losses.values()).backward()

    assert_finite_grads(model, name)  # every parameter is used and gets a finite gradient
    t = model.transformer
    parts = {
        "backbone": model.backbone, "neck": model.neck, "encoder": t.encoder, "decoder layers": t.decoder.layers,
        "class heads": t.decoder.class_heads, "box heads": t.decoder.box_heads, "ref_point_head": t.decoder.ref_point_head,
        "enc_class_head": t.enc_class_head, "enc_box_head": t.enc_box_head, "enc_output": t.enc_output,
    }
    parts["query_content" if name == "plusplus" else "proposal_content"] = t.query_content if name == "plusplus" else t.proposal_content
    for what, module in parts.items():
        assert_finite_grads(module, what)
    # level_embed only enters through the encoder's sampling-offset / attention-weight projections,
    # whose weights start at zero (paper init), so its gradient is exactly zero at step 0.
    assert t.level_embed.grad is not None and torch.isfinite(t.level_embed.grad).all()
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["plain", "plusplus"])
def test_loss_dict_values_match_criterion_per_layer(models, name):
    """``loss_*_{i}`` is the criterion on layer i, ``loss_*`` on the last layer, ``loss_*_enc`` on the
    selected proposals times ``enc_loss_weight``; one image has no GT."""
    model = models[name]
    model.eval()  # no dropout: the same decoder output below and in the loss dict
    batch = synthetic_batch()
    with torch.no_grad():
        features, masks, pos = features_of(model, batch)
        out, enc, _ = model.transformer(features, masks, pos)
        targets = targets_of(model, batch)
        assert [len(t["labels"]) for t in targets] == [2, 0]
        losses = model.losses(out, enc, targets)
        num_boxes = 2.0
        for i, layer in enumerate(out.layers):
            expected, _ = model.criterion(layer.logits, layer.boxes, targets, num_boxes)
            suffix = "" if i == DEC_LAYERS - 1 else f"_{i}"
            for k, v in expected.items():
                torch.testing.assert_close(losses[k + suffix], v)
        expected, _ = model.criterion(enc["logits"], enc["boxes"], targets, num_boxes)
        for k, v in expected.items():
            torch.testing.assert_close(losses[k + "_enc"], v * model.enc_loss_weight)
        model.enc_loss_weight = 3.0
        try:
            tripled = model.losses(out, enc, targets)
        finally:
            model.enc_loss_weight = 1.0
        for k in ("loss_class_enc", "loss_bbox_enc", "loss_giou_enc"):
            torch.testing.assert_close(tripled[k], 3 * losses[k])
        torch.testing.assert_close(tripled["loss_class"], losses["loss_class"])
        # GT boxes are normalized by the unpadded image size (cxcywh in [0, 1]).
        w, h = IMAGE_SIZES[0][1], IMAGE_SIZES[0][0]
        torch.testing.assert_close(targets[0]["boxes"][0], torch.tensor([22.0 / w, 18.0 / h, 36.0 / w, 24.0 / h]))
    assert enc["logits"].shape == (2, 20, NUM_CLASSES) and enc["boxes"].shape == (2, 20, 4)
    # Box heads start at zero: the first layer predicts its reference boxes.
    torch.testing.assert_close(out.layers[0].boxes, out.layers[0].reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.layers[0].reference, enc["boxes"])


class CaptureLastLogits:
    """Forward hook on the transformer: the last decoder layer's logits of each call."""

    def __init__(self, transformer):
        self.logits = []
        self.handle = transformer.register_forward_hook(lambda m, args, out: self.logits.append(out[0].layers[-1].logits))


@pytest.mark.parametrize("name", ["plain", "plusplus"])
def test_inference_outputs(models, name):
    model = models[name]
    model.eval()
    k = 15
    model.select_box_nums_for_evaluation = k
    capture = CaptureLastLogits(model.transformer)
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


def run_decoder(decoder, seed=0):
    """The decoder alone on a random two-level memory: (B=2, Q=5) queries."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[6, 5], [3, 3], [2, 2], [1, 1]])
    start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    memory = torch.randn(2, int(shapes.prod(1).sum()), decoder.d_model, generator=gen)
    valid_ratios = torch.tensor([[1.0, 1.0], [0.8, 0.9]])[:, None].expand(-1, 4, -1)
    content, reference = random_queries(2, 5, decoder.d_model, seed=seed)
    reference.requires_grad_()  # as the anchors of the one-stage variant
    return decoder(content, reference, memory, shapes, start, valid_ratios), reference


def test_look_forward_twice_gradient_path():
    decoders = {}
    for lft in (True, False):
        cfg = tiny_model_config("plusplus", dec_layers=3)
        cfg.transformer.decoder.look_forward_twice = lft
        decoders[lft] = build(cfg.transformer.decoder, seed=1)
    decoders[False].load_state_dict(decoders[True].state_dict())
    with torch.no_grad():  # non-zero box heads, so layer outputs depend on the refinements
        for decoder in decoders.values():
            for head in decoder.box_heads:
                head.layers[-1].weight.normal_(0, 0.01, generator=torch.Generator().manual_seed(2))
    outputs = {}
    for lft, decoder in decoders.items():
        decoder.train()
        out, reference = run_decoder(decoder)
        outputs[lft] = out
        out.layers[1].boxes.sum().backward()
        grad0 = decoder.box_heads[0].layers[-1].weight.grad
        grad1 = decoder.box_heads[1].layers[-1].weight.grad
        assert grad1 is not None and grad1.abs().sum() > 0
        if lft:  # layer 1's boxes = refine(layer 0's boxes, undetached)
            assert grad0 is not None and grad0.abs().sum() > 0
            assert reference.grad is not None and reference.grad.abs().sum() > 0
        else:
            assert grad0 is None
            assert reference.grad is None
        # Layer 2's input reference (and so its queries) never carries gradient back to layer 0.
        assert not out.layers[2].reference.requires_grad
        assert decoder.box_heads[2].layers[-1].weight.grad is None
    # The switch changes only the gradient path, not the values.
    for a, b in zip(outputs[True].layers, outputs[False].layers):
        torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0)
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    for i in range(2):  # refinement: layer i+1 starts from layer i's boxes
        torch.testing.assert_close(outputs[True].layers[i + 1].reference, outputs[True].layers[i].boxes.detach())


@pytest.mark.parametrize("name", ["plain"])
def test_one_stage_learned_anchors(name):
    model = build_tiny_model(name, dec_layers=DEC_LAYERS, num_queries=12, two_stage=False)
    t = model.transformer
    assert not t.two_stage and not hasattr(t, "enc_class_head") and not hasattr(t, "proposal_content")
    assert t.anchor_boxes.weight.shape == (12, 4) and t.query_content.weight.shape == (12, 128)
    model.train()
    losses = model(synthetic_batch())
    assert set(losses) == expected_loss_keys(DEC_LAYERS, two_stage=False)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert_finite_grads(model, name)
    assert t.anchor_boxes.weight.grad.abs().sum() > 0 and t.query_content.weight.grad.abs().sum() > 0
    model.eval()
    outputs = []
    handle = t.register_forward_hook(lambda m, args, out: outputs.append(out))
    with torch.no_grad():
        results = model(synthetic_batch(with_instances=False))
    handle.remove()
    (out, enc, _), = outputs
    assert enc is None
    torch.testing.assert_close(out.layers[0].reference, t.anchor_boxes.weight.sigmoid()[None].expand(2, -1, -1))
    assert [r["instances"].image_size for r in results] == IMAGE_SIZES
    assert all(0 < len(r["instances"]) <= 12 * NUM_CLASSES for r in results)


def test_two_stage_needs_enough_encoder_positions(models):
    from detr_plus.modeling.transformer import EncoderState

    t = models["plain"].transformer
    shapes = torch.tensor([[2, 5]])
    state = EncoderState(torch.randn(1, 10, 128), shapes, torch.tensor([0]), torch.ones(1, 1, 2), torch.zeros(1, 10, dtype=torch.bool))
    t.num_queries = 11
    try:
        with torch.no_grad(), pytest.raises(ValueError, match="num_queries"):
            t.select_queries(state)
        t.num_queries = 10
        with torch.no_grad():
            content, reference, enc = t.select_queries(state)
    finally:
        t.num_queries = 20
    assert content.shape == (1, 10, 128) and reference.shape == (1, 10, 4) and enc["logits"].shape == (1, 10, NUM_CLASSES)
