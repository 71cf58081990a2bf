"""N_aux = 3 with identical k {6, 6, 6} (Table 4 "Identical k"; Table 1 #6 vs #7: 47.5 vs 48.0)."""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [6, 6, 6]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_identical_k"
