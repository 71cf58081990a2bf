"""N_aux = 1: one LoRA branch, k {6} (Table 4; Table 2 "LoRA-DETR 1": 48.8 AP, 48.1M parameters)."""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [6]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_naux1"
