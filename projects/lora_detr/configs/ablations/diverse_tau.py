"""N_aux = 3, k {6, 6, 6}, diverse tau of Eq. 7 per branch (ablation "Diverse tau": 47.7 vs 48.0 for
diverse k). The paper gives no tau values: {0.3, 0.4, 0.5} around the default 0.4. The paper ran the
ablation with naive FFN branches and focal loss (Table 1's setting): add ``model.variants.naive=True``.
"""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [6, 6, 6]
model.variants.taus = [0.3, 0.4, 0.5]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_diverse_tau"
