"""LoRA-DETR on the published two-stage Deformable-DETR with box refinement, R50, 300 queries, 12 epochs:
N_aux = 3 LoRA branches, k {2, 4, 6}, rank 32 (Table 2 "LoRA-DETR 3": 49.0 AP), box-regression
head LR x0.1 (Table 7), grad-norm clip 0.1 (``train.clip_grad_norm``, the core default).

The paper's model: FFN 2048 in encoder and decoder (its baseline has 47.3M parameters, a rank-32
branch 0.885M: 49.9M in training here, 47.3M at inference). Its baseline is
``baseline_two_stage_r50_12ep_ffn2048.py`` (the core two-stage config with the same FFN).
"""
from ....configs.deformable_detr.deformable_detr_two_stage_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.lora_detr import lora_detr as _lora_detr  # "_": not itself a key of this config

model.update(_lora_detr)
model.transformer.encoder.d_ffn = 2048  # the paper's 47.3M baseline (the published Deformable DETR has 1024)
model.transformer.decoder.d_ffn = 2048
# In the authors' code the sampling offsets train at the full LR and only the box head is at x0.1
# (docs/authors_code_facts.md#lora-detr-optimiser); the baseline's recipe has them at x0.1. Backbone stays at x0.1.
optimizer.lr_factors.pop("sampling_offsets")
optimizer.lr_factors.box_heads = 0.1  # the decoder's box-regression heads (transformer.decoder.box_heads)
train.output_dir = "./output/lora_deformable_detr_r50_12ep"
