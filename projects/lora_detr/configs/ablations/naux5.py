"""N_aux = 5: LoRA branches with k {2, 3, 4, 5, 6} (Table 4; Table 1 #8 with naive FFNs)."""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [2, 3, 4, 5, 6]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_naux5"
