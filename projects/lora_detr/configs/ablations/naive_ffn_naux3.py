"""The naive architecture (Fig. 1(c)) with N_aux = 3, k {2, 4, 6} (Table 1 #7; the training-cost
comparison of Table 6 against LoRA branches)."""
from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.naive = True
train.output_dir = "./output/lora_deformable_detr_r50_12ep_naive_ffn_naux3"
