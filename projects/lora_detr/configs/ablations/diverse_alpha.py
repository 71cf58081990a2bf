"""N_aux = 3, k {6, 6, 6}, diverse alpha (class weight of Eq. 7, also that of the VFL+ target s = M)
per branch (ablation "Diverse alpha": 47.3 vs 48.0 for diverse k). The paper gives no alpha values:
{0.1, 0.3, 0.5} around the default 0.3. The paper ran the ablation with naive FFN branches and focal
loss (Table 1's setting): add ``model.variants.naive=True``.
"""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [6, 6, 6]
model.variants.alphas = [0.1, 0.3, 0.5]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_diverse_alpha"
