"""The published Deformable-DETR configs compute what the official code computes (issue #26, items
1-4; docs/authors_code_facts.md#deformable-detr-official-code-differences): the initial reference
points are trained by the deformable sampling, the single-stage / refine box heads start at w / h
sigmoid(-2), the stem and res2 are frozen, and a batch is padded to its largest image."""
import math

import pytest
import torch
import torchvision
from detectron2.config import LazyConfig, instantiate

from model_utils import CONFIGS, REPO, build, synthetic_batch, tiny_model_config


def test_the_sampling_gradient_reaches_the_reference_point_layer():
    """With the class loss alone (no box loss), the reference-point layer still learns: only through
    the sampling locations of the undetached initial reference points."""
    cfg = tiny_model_config("plain")
    cfg.criterion.loss_weights = {"class": 1.0, "bbox": 0.0, "giou": 0.0}
    cfg.enc_loss_weight = 0.0
    model = build(cfg).train()
    sum(model(synthetic_batch()).values()).backward()
    grad = model.transformer.reference_points.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    cfg.transformer.decoder.initial_reference_grad = False  # today's option: only the box losses train it
    detached = build(cfg).train()
    sum(detached(synthetic_batch()).values()).backward()
    assert detached.transformer.reference_points.weight.grad is None or detached.transformer.reference_points.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("name, wh", [("plain", 1 / (1 + math.exp(2.0))), ("refine", 1 / (1 + math.exp(2.0))), ("two_stage", None)])
def test_the_first_boxes_are_about_0_12_wide_in_the_single_stage_and_refine_models(name, wh):
    model = build(tiny_model_config(name)).eval()
    with torch.no_grad():
        _, state, selection = model.encode_and_select(synthetic_batch(with_instances=False))
        first = model.transformer.decode(selection.queries, state).layers[0]
    if wh is None:  # the official two-stage model resets the bias: boxes start at their proposals
        assert torch.allclose(first.boxes, selection.queries.reference, atol=1e-6)
    else:
        assert torch.allclose(first.boxes[..., 2:], torch.full_like(first.boxes[..., 2:], wh), atol=1e-6)
    # Only the first layer's head: the official refine model sets bbox_embed[0] alone, so a later
    # layer's zero bias keeps the w / h it is given instead of shrinking it by -2 in logit space again.
    heads = model.transformer.decoder.box_heads
    for layer in range(1, len(heads)):
        expected = -2.0 if (wh is not None and heads[layer] is heads[0]) else 0.0
        assert torch.all(heads[layer].layers[-1].bias[2:] == expected), layer


def test_the_stem_and_res2_are_frozen_res3_to_res5_train():
    backbone = instantiate(LazyConfig.load(str(CONFIGS["plain"])).model.backbone)
    for name, p in backbone.named_parameters():
        assert p.requires_grad == name.startswith(("res3", "res4", "res5")), name


def test_a_batch_is_padded_to_its_largest_image():
    model = build(tiny_model_config("plusplus"))
    images, masks = model.preprocess_images(synthetic_batch(sizes=[(64, 80), (72, 64)]))
    assert images.tensor.shape[-2:] == (72, 80) and masks.shape[-2:] == (72, 80)
    assert masks[0, :64, :80].logical_not().all() and masks[0, 64:].all() and masks[1, :, 64:].all()


def test_the_published_two_stage_encoder_loss_is_the_focal_loss_over_every_tokens_c_logits():
    """Item 5: the official two-stage proposal head is C wide, its top-k is by the first logit, and its
    loss is the focal loss over every valid token's C logits with every GT labelled 0 (the other
    logits only see negatives); the ++ keeps H-DETR's one-logit head."""
    model = build(tiny_model_config("two_stage")).eval()  # no dropout: the calls below see the same values
    assert model.transformer.enc_class_head.out_features == 3
    assert build(tiny_model_config("plusplus")).transformer.enc_class_head.out_features == 1
    batch = synthetic_batch()
    losses, matching = model.training_losses(batch)
    _, _, selection = model.encode_and_select(batch)
    enc = selection.encoder_predictions
    assert enc["logits"].shape[-1] == 3 and not enc["valid"].all()  # every token, C logits
    images, _ = model.preprocess_images(batch)
    binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in model.prepare_targets(batch, images.image_sizes)]
    (q, g), = matching["enc"][0][:1]
    onehot = torch.zeros_like(enc["logits"][0])
    onehot[q, 0] = 1.0
    valid = enc["valid"][0]
    by_hand = torchvision.ops.sigmoid_focal_loss(enc["logits"][0][valid], onehot[valid], reduction="sum")
    second = torchvision.ops.sigmoid_focal_loss(enc["logits"][1][enc["valid"][1]], torch.zeros_like(enc["logits"][1][enc["valid"][1]]), reduction="sum")
    torch.testing.assert_close(losses["loss_class_enc"], 2.0 * (by_hand + second) / 2.0 * model.enc_loss_weight)
    scores = enc["logits"][..., 0].masked_fill(~enc["valid"], -math.inf)
    assert torch.equal(selection.topk_indices, scores.topk(20, dim=1).indices)
    assert binary[0]["labels"].tolist() == [0, 0]


def test_the_cpu_shapes_configs_pad_to_a_multiple_of_32():
    """The deliberate difference of the 128 px shapes configs (README): a multiple of 32, so every
    level up to stride 32 ends where the image ends; the published COCO configs pad as the official code."""
    for name in ("deformable_detr_plain_tiny", "deformable_detr_refine_tiny", "deformable_detr_tiny"):
        cfg = LazyConfig.load(str(REPO / "configs" / "shapes" / f"{name}.py"))
        assert cfg.model.size_divisibility == 32, name
        model = instantiate(cfg.model)
        images, masks = model.preprocess_images(synthetic_batch(sizes=[(64, 80), (72, 64)]))
        assert images.tensor.shape[-2:] == (96, 96) and masks[0, :64, :80].logical_not().all() and masks[0, 64:].all()
    for name in ("deformable_detr_r50_12ep", "deformable_detr_refine_r50_50ep", "deformable_detr_plusplus_r50_12ep"):
        assert LazyConfig.load(str(REPO / "configs" / "deformable_detr" / f"{name}.py")).model.size_divisibility == 0, name


def test_a_box_head_shared_by_refining_layers_starts_at_zero():
    """OD-DETR's shared decoder on the refine model: one box head for every refining layer, so a
    w / h bias of -2 would shrink the boxes by -2 in logit space at every layer; it stays 0."""
    cfg = LazyConfig.load(str(REPO / "projects" / "od_detr" / "configs" / "od_detr_shapes_tiny_baseline.py"))
    decoder = instantiate(cfg.model.transformer.decoder)
    assert decoder.box_refine and decoder.share_heads and cfg.model.transformer.decoder.box_wh_bias == -2.0
    assert all(h is decoder.box_heads[0] for h in decoder.box_heads)
    assert torch.all(decoder.box_heads[0].layers[-1].bias == 0)
