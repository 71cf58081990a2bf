"""LoRA-DETR on Deformable-DETR++ (two-stage, box refinement, mixed query selection, look forward
twice, FFN 2048, dropout 0), R50, 900 queries, 12 epochs: N_aux = 3, k {2, 4, 6}, rank 48
(Table 2 "LoRA-DETR 3": 51.0 AP, 51.4M parameters = 47.5M + 3 x 1.33M).
"""
from ....configs.deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.lora_detr import lora_detr as _lora_detr  # "_": not itself a key of this config

model.update(_lora_detr)
model.routes.rank = 48
optimizer.lr_factors.box_heads = 0.1
train.output_dir = "./output/lora_deformable_detr_plusplus_r50_12ep"
