"""The contracts of ``detr_plus.modeling.contracts`` that hold across extension points (issue #25):
a layer returns one output per variant; a wrapper's per-query extras are supervised for the primary
queries only when groups ride along; the loss-key rule holds per mode; old checkpoint names load
into the EMA too."""

import pytest
import torch
from torch import nn

from detr_plus.engine.ema import ModelEMA
from detr_plus.modeling import LayerOutput, OwnFFNVariant, SetCriterion, HungarianMatcher, TrainingVariant
from model_utils import D_MODEL, build, synthetic_batch, tiny_model_config, with_copied_teacher
from test_composition import composed


class DropsVariants(nn.Module):
    """A wrapper that forgets the variants it is given."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, inputs):
        return LayerOutput(self.layer(inputs).hidden)


def own_ffn_variant(layers=2):
    return TrainingVariant([OwnFFNVariant(D_MODEL, 2 * D_MODEL) for _ in range(layers)], SetCriterion(HungarianMatcher()))


def test_a_layer_that_drops_a_variants_output_is_an_error_naming_it():
    model = build(tiny_model_config("plusplus", dec_layers=2, num_queries=20))
    model.variants["v"] = own_ffn_variant()
    model.transformer.decoder.layers[1] = DropsVariants(model.transformer.decoder.layers[1])
    with pytest.raises(ValueError, match=r"decoder layer 1 \(DropsVariants\) returned outputs for variants \[\], was given \['v'\]"):
        model.training_losses(synthetic_batch())


def test_exit_predictions_are_supervised_for_the_primary_queries_only_beside_groups():
    """QR-DETR + OD-DETR: the routed layers' exit predictions cover the joint pass (primary + teacher
    group + auxiliary groups); their loss matches among the 20 primary queries only."""
    torch.manual_seed(0)
    model = with_copied_teacher(build(composed("od_detr", "qr_detr")))
    model.train()
    _, matching = model.training_losses(synthetic_batch())
    exits = [pairs for pairs in matching["exit"] if pairs is not None]
    assert exits and all((q < 20).all() for pairs in exits for q, _ in pairs)
    assert len(matching["exit"]) == 2  # one entry per decoder layer, None where a layer has no exit


def test_the_loss_keys_are_checked_per_mode():
    """QR-DETR's exit heads exist in training mode only: losses computed in eval mode (as the tests and
    tools do) neither set nor break the training steps' keys."""
    model = build(composed("qr_detr"))
    model.eval()
    with torch.no_grad():
        assert not any(k.startswith("exit/") for k in model.training_losses(synthetic_batch())[0])
    model.train()
    first = set(model(synthetic_batch()))
    assert any(k.startswith("exit/") for k in first) and set(model(synthetic_batch())) == first


def test_an_ema_saved_with_the_names_before_core_v3_loads():
    model = build(tiny_model_config("plusplus", dec_layers=2, num_queries=20))
    model.variants["o2o"] = own_ffn_variant()
    ema = ModelEMA(model, 0.9)
    state = ema.state_dict()
    state["shadow"] = {k.replace("variants.o2o.layer_variants.", "routes.o2o.branches."): v + 1 for k, v in state["shadow"].items()}
    assert any(k.startswith("routes.o2o.branches.") for k in state["shadow"])
    restored = ModelEMA(model, 0.9)
    restored.load_state_dict(state)
    name = "variants.o2o.layer_variants.1.ffn.linear2.bias"
    assert torch.equal(restored.module.state_dict()[name], model.state_dict()[name] + 1)


def test_a_groups_own_mask_blocks_attention_inside_the_group_only():
    """DINO packs its denoising groups into one group whose queries see only their own part: the
    group's ``self_attn_mask`` lands in its block of the joint mask, the other blocks as before."""
    from detr_plus.modeling import DecoderQueries, JointQueries, QueryGroup, group_attention_mask

    def queries(n):
        return DecoderQueries(torch.zeros(1, n, 4), torch.full((1, n, 4), 0.5))

    inside = torch.tensor([[False, False, True, True], [False, False, True, True],
                           [True, True, False, False], [True, True, False, False]])
    joint = JointQueries(queries(3), {"dn": QueryGroup(queries(4), None, sees_primary=True, self_attn_mask=inside),
                                      "other": QueryGroup(queries(2), None)})
    expected = group_attention_mask([3, 4, 2], [True, False])
    expected[3:7, 3:7] = inside
    assert torch.equal(joint.mask, expected)
    assert joint.mask[3:7, :3].logical_not().all()  # the denoising queries still see the primary ones
