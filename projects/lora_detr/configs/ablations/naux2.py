"""N_aux = 2: LoRA branches with k {3, 6} (Table 4; Table 6: 49.0M parameters)."""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [3, 6]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_naux2"
