"""Activation checkpointing (``model.transformer.{encoder,decoder}.checkpoint_layers=True``, issue #31):
the same losses and the same gradients as without it, dropout included, for the baselines of every
encoder and decoder kind and for every method's decoder (routes, query groups, layer wrappers, the
teacher); nothing changes at inference; and the layers really are recomputed in the backward pass."""
import pytest
import torch

from detr_plus.modeling.activation_checkpoint import call_layer
from model_utils import synthetic_batch, with_copied_teacher
from test_first_step_losses import instantiate_shrunk

CONFIGS = [
    "configs/shapes/deformable_detr_tiny.py",  # deformable encoder and decoder, two-stage
    "configs/shapes/dino_tiny.py",  # denoising groups, look-forward-twice
    "configs/shapes/conditional_detr_tiny.py",  # standard-attention encoder, conditional decoder
    "projects/mr_detr/configs/mr_detr_shapes_tiny.py",  # routes
    "projects/lora_detr/configs/lora_detr_shapes_tiny.py",  # LoRA branches
    "projects/od_detr/configs/od_detr_shapes_tiny.py",  # auxiliary groups, the teacher
    "projects/qr_detr/configs/qr_detr_shapes_tiny.py",  # routed (EEQR) layers, gather / scatter
]


def build(config, checkpoint_layers):
    def switch(model_cfg):
        model_cfg.transformer.encoder.checkpoint_layers = checkpoint_layers
        model_cfg.transformer.decoder.checkpoint_layers = checkpoint_layers

    model = instantiate_shrunk(config, switch)  # the same weights in both models
    for module in model.modules():  # dropout on everywhere: the recomputation must replay its masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    return with_copied_teacher(model)


def losses_and_gradients(model):
    model.train()
    torch.manual_seed(1)  # the same dropout masks in both runs (the recomputation replays them)
    losses = model(synthetic_batch())
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


@pytest.mark.parametrize("config", CONFIGS)
def test_checkpointed_layers_give_the_same_losses_and_gradients(config):
    plain, checkpointed = build(config, False), build(config, True)
    plain_losses, plain_grads = losses_and_gradients(plain)
    losses, grads = losses_and_gradients(checkpointed)
    assert sorted(losses) == sorted(plain_losses) and len(losses) > 3
    for key in plain_losses:
        torch.testing.assert_close(losses[key], plain_losses[key], rtol=1e-6, atol=1e-7, msg=key)
    assert sorted(grads) == sorted(plain_grads)
    assert any(name.startswith("transformer.encoder.") for name in grads)
    assert any(name.startswith("transformer.decoder.layers.") for name in grads)
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    checkpointed.eval()
    plain.eval()
    with torch.no_grad():  # inference: the switch is off (no recomputation), outputs are equal
        a = plain(synthetic_batch(with_instances=False))
        b = checkpointed(synthetic_batch(with_instances=False))
    for x, y in zip(a, b):
        torch.testing.assert_close(x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(x["instances"].scores, y["instances"].scores, rtol=0, atol=0)


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear, self.calls = torch.nn.Linear(3, 3), 0

    def forward(self, x):
        self.calls += 1
        return torch.relu(self.linear(x))


def test_a_checkpointed_layer_runs_again_in_the_backward_pass_only_when_training_with_gradients():
    layer, x = Counting(), torch.randn(4, 3, requires_grad=True)
    call_layer(layer, True, x).sum().backward()
    assert layer.calls == 2  # forward, then the recomputation in backward
    call_layer(layer, False, x).sum().backward()
    assert layer.calls == 3
    layer.eval()
    call_layer(layer, True, x).sum().backward()
    assert layer.calls == 4  # eval: no checkpoint
    layer.train()
    with torch.no_grad():
        call_layer(layer, True, x)
    assert layer.calls == 5


def test_the_config_switches_reach_the_modules():
    model = build("configs/shapes/deformable_detr_tiny.py", True)
    assert model.transformer.encoder.checkpoint_layers and model.transformer.decoder.checkpoint_layers
    assert not build("configs/shapes/deformable_detr_tiny.py", False).transformer.encoder.checkpoint_layers
