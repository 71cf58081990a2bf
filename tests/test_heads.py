"""The head slot (``model.heads``, ``contracts.Head``) with the README's example plug-in, an IoU head:
its loss on every decoder layer of every set of predictions, the formula by hand, a gradient into
the head, and its per-query output on the detections at inference."""
import re

import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

from detr_plus.engine.compose import named
from detr_plus.modeling import HungarianMatcher, LayerVariant, OwnFFNVariant, SetCriterion, TrainingVariant
from model_utils import D_MODEL, synthetic_batch, tiny_model_config
from plugin_example import IoUHead


def model_with_iou_head(variants=None):
    cfg = tiny_model_config("plusplus", dec_layers=2, num_queries=20)
    cfg.heads = L(named)(iou=L(IoUHead)(d_model=D_MODEL, weight=2.0))
    torch.manual_seed(0)
    model = instantiate(cfg)
    if variants:
        model.variants.update(variants)
    return model.train()


def test_the_head_adds_its_loss_on_every_layer_and_to_every_variant():
    share_all = TrainingVariant([LayerVariant(), LayerVariant()], SetCriterion(HungarianMatcher()))
    model = model_with_iou_head({"o2o": share_all})
    losses, matching = model.training_losses(synthetic_batch())
    assert {"loss_iou", "loss_iou_0", "o2o/loss_iou_0", "o2o/loss_iou_1"} <= set(losses)
    assert not any(k.startswith("loss_iou_enc") for k in losses)  # heads read decoder layers only
    losses["loss_iou"].backward()
    assert model.heads["iou"].mlp.layers[-1].weight.grad.abs().sum() > 0


def test_the_head_loss_is_the_bce_against_the_matched_iou_over_the_object_count():
    head = IoUHead(4, weight=2.0)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]])}]
    predictions = type("P", (), {"boxes": boxes})()
    outputs = torch.tensor([[0.0, 3.0]])
    loss = head.loss(outputs, predictions, targets, [(torch.tensor([0]), torch.tensor([0]))], num_boxes=1.0)["loss_iou"]
    # IoU of the 0.2 x 0.2 box inside the 0.2 x 0.4 one: 0.5; BCE(sigmoid(0) = 0.5, 0.5) = log 2; x weight 2.
    assert loss.item() == torch.tensor(2 * 0.6931471805599453).item()


def test_detections_carry_the_head_output_of_their_query():
    model = model_with_iou_head().eval()
    with torch.no_grad():
        instances = model(synthetic_batch(with_instances=False))[0]["instances"]
    assert instances.has("pred_iou") and instances.pred_iou.shape == (len(instances),)
    assert torch.isfinite(instances.pred_iou).all()


def test_a_checkpoint_with_the_names_before_core_v3_loads():
    """``routes.NAME.branches.I.*`` and ``query_groups.*`` (checkpoints before issue #25) load under
    ``variants.NAME.layer_variants.I.*`` / ``group_sources.*``."""
    def own_ffn():
        return TrainingVariant([OwnFFNVariant(D_MODEL, 2 * D_MODEL) for _ in range(2)], SetCriterion(HungarianMatcher()))

    source = model_with_iou_head({"o2o": own_ffn()})
    old = {re.sub(r"^variants\.o2o\.layer_variants\.", "routes.o2o.branches.", k): v.clone() + 1 for k, v in source.state_dict().items()}
    assert "routes.o2o.branches.1.ffn.linear2.bias" in old
    target = model_with_iou_head({"o2o": own_ffn()})
    result = target.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(target.state_dict()[k], v + 1) for k, v in source.state_dict().items())
