"""Mixed precision: three training steps of every tiny config under CPU autocast (bfloat16), as
``train.amp.enabled=True`` runs them on CPU (on a GPU: bfloat16, or float16 with a grad scaler).

The deformable attention (where the model has one) samples at float32 locations from bfloat16 values, the losses are float32
and finite, and every step moves the weights."""
import itertools

import pytest
import torch
from detectron2.utils.events import EventStorage
from test_first_step_losses import build

from detr_plus.engine.trainer import DetrTrainer
from detr_plus.layers import ms_deform_attn as msda
from model_utils import REPO, synthetic_batch

TINY_CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in [*REPO.glob("configs/shapes/*_tiny.py"),
                                                                  *REPO.glob("projects/*/configs/*_shapes_tiny.py")])


def test_every_method_has_a_tiny_config_here():
    assert {p.split("/")[1] for p in TINY_CONFIGS if p.startswith("projects/")} == {"mr_detr", "lora_detr", "od_detr", "qr_detr"}
    assert "configs/shapes/dino_tiny.py" in TINY_CONFIGS and "configs/shapes/h_detr_tiny.py" in TINY_CONFIGS


@pytest.mark.parametrize("config_path", TINY_CONFIGS)
def test_three_bfloat16_autocast_steps(config_path, monkeypatch):
    sampled = []

    def spy(name):
        implementation = msda.IMPLEMENTATIONS[name]

        def sample(value, spatial_shapes, level_start_index, locations, weights):
            sampled.append((value.dtype, locations.dtype, weights.dtype))
            return implementation(value, spatial_shapes, level_start_index, locations, weights)
        return sample

    monkeypatch.setattr(msda, "IMPLEMENTATIONS", {name: spy(name) for name in msda.IMPLEMENTATIONS})
    model = build(config_path).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    trainer = DetrTrainer(model, itertools.repeat(synthetic_batch()), optimizer, clip_grad_norm=0.1, amp=True, amp_dtype="bfloat16")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with EventStorage(0) as storage:
        trainer.storage = storage
        for step in range(3):
            trainer.iter = storage.iter = step
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss_dict = model(synthetic_batch())
            assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in loss_dict.values()), config_path
            trainer.run_step()
        assert torch.isfinite(torch.tensor(storage.history("total_loss").values()[-1][0]))
    deformable = any(isinstance(m, msda.MultiScaleDeformableAttention) for m in model.modules())
    assert bool(sampled) == deformable  # Conditional / DAB-DETR: standard attention only
    assert all(v == torch.bfloat16 and loc == torch.float32 and w == torch.float32 for v, loc, w in sampled)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert len(moved) > 0.9 * len(before), f"{config_path}: only {len(moved)} of {len(before)} parameters trained"
