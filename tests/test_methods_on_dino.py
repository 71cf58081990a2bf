"""Every method on DINO (issue #28): each project's DINO config, made tiny, trains a step with DINO's
denoising losses beside the method's own, keeps its loss keys on a batch without objects, and its
weights without the training-only parts evaluate bit-equal in the plain DINO model (the baseline's
parameters and cost at inference; QR-DETR: in its own routed decoder without the exit heads)."""

import pytest
import torch
from detectron2.config import LazyConfig


from model_utils import (REPO, assert_inference_without_training_parts, batch_without_objects, build, shrink_model_config,
                         synthetic_batch, tiny_model_config, with_copied_teacher)

# config -> loss-key prefixes the method adds beside DINO's "dn/"
CONFIGS = {
    "projects/od_detr/configs/od_dino_r50_4scale_12ep.py": ("pd/", "ag_0/"),
    "projects/mr_detr/configs/mr_dino_r50_4scale_12ep.py": ("route1/", "route3/", "route1/dn/", "route3/dn/"),
    "projects/lora_detr/configs/lora_dino_r50_4scale_12ep.py": ("aux0/", "aux2/"),
    "projects/lora_detr/configs/lora_dino_hybrid_r50_4scale_12ep.py": ("aux0/", "one2many/"),
    "projects/qr_detr/configs/qr_dino_r50_4scale_12ep.py": ("exit/",),
}
ROUTED_AT_INFERENCE = {"projects/qr_detr/configs/qr_dino_r50_4scale_12ep.py"}  # QR-DETR's inference model is its routed decoder


def tiny(path):
    return shrink_model_config(LazyConfig.load(str(REPO / path)).model)


@pytest.mark.parametrize("path", list(CONFIGS), ids=[p.split("/")[-1][:-3] for p in CONFIGS])
def test_method_on_dino_trains_beside_denoising_and_evaluates_as_dino(path):
    model = with_copied_teacher(build(tiny(path)))
    model.train()
    torch.manual_seed(0)
    losses = model(synthetic_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    for prefix in ("dn/",) + CONFIGS[path]:
        assert any(k.startswith(prefix) and v > 0 for k, v in losses.items()), f"no {prefix} losses"
    sum(losses.values()).backward()
    assert set(model(batch_without_objects())) == set(losses)
    inference = tiny_model_config("dino")
    if path in ROUTED_AT_INFERENCE:
        inference = tiny(path)
        inference.transformer.decoder.layer_wrapper.exit_heads = "shared"  # the layer's heads: no training-only ones
    inference.group_sources = inference.variants = inference.extra_output_criteria = None
    assert_inference_without_training_parts(model, inference)


def test_mr_detr_on_dino_hides_the_instruction_tokens_from_the_denoising_queries():
    """The authors' DINO code: Route-3's tokens are seen by the matching queries only; with the tokens
    made huge, the denoising queries' Route-3 outputs do not change, the matching queries' do."""
    model = build(tiny("projects/mr_detr/configs/mr_dino_r50_4scale_12ep.py")).train()

    def route3_states():
        """Route-3's first-layer states of its matching and its denoising queries in a training step."""
        decoded = []
        hook = model.transformer.decoder.register_forward_hook(lambda module, args, out: decoded.append(out))
        torch.manual_seed(0)
        model(synthetic_batch())
        hook.remove()
        return decoded[0].variants["route3"][0].hidden, decoded[0].variant_groups["route3"]["dn"][0].hidden

    with torch.no_grad():
        matching, denoising = route3_states()
        for layer_variant in model.variants["route3"].layer_variants:
            layer_variant.token_content.mul_(50.0)
        matching_big, denoising_big = route3_states()
    torch.testing.assert_close(denoising_big, denoising)
    assert not torch.allclose(matching_big, matching)
