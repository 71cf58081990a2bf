"""Table 1 row 6: N_aux = 3 naive FFN branches with identical k {6, 6, 6} (47.5 AP vs 48.0 for
diverse k, row 7), in Table 1's setting (``naive_ffn_naux3.py``: focal loss, box head at the full LR)."""
from .naive_ffn_naux3 import dataloader, lr_multiplier, model, optimizer, train

model.variants.ks = [6, 6, 6]
train.output_dir = "./output/lora_deformable_detr_r50_12ep_identical_k"
