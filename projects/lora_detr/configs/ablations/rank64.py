"""LoRA rank r = 64 with N_aux = 1, k {6} (Table 5: 48.5 / 48.8 / 48.2 AP for r = 16 / 32 / 64)."""
from .naux1 import dataloader, lr_multiplier, model, optimizer, train

model.variants.rank = 64
train.output_dir = "./output/lora_deformable_detr_r50_12ep_rank64"
