"""N_aux = 3, k {6, 6, 6}, a diverse alpha (the class weight of Eq. 7) per branch (ablation "Diverse
alpha": 47.3 vs 48.0 for diverse k), in Table 1's setting like the paper (``naive_ffn_naux3.py``:
naive FFN branches, focal loss, box head at the full LR). The paper gives no alpha values:
{0.1, 0.3, 0.5} around the default 0.3."""
from .naive_ffn_naux3 import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [6, 6, 6]
model.variants.alphas = [0.1, 0.3, 0.5]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_diverse_alpha"
