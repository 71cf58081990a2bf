"""LoRA-DETR on DINO-4scale, R50, 900 queries, 12 epochs (not a row of the paper, whose DINO-style rows
stand on Relation-DETR): N_aux = 3, k {2, 4, 6}, rank 48 and the o2o positives merged into each
branch's (the 900-query recipe), every branch's losses x0.5 because DINO's denoising queries train
beside them (Sec. 4, "Training": "we down-weight the auxiliary losses by a factor of 0.5"). DINO's
recipe otherwise (``configs/dino/dino_r50_4scale_12ep.py``), with LoRA-DETR's box-head LR x0.1;
the denoising groups keep DINO's focal loss, the primary branch takes VFL+ (s = IoU)."""
from ....configs.dino.dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.lora_detr import lora_detr as _lora_detr

model.update(_lora_detr)
model.variants.update(rank=48, merge_o2o_positives=True, loss_scale=0.5)
optimizer.lr_factors.box_heads = 0.1  # Sec. 4: "reduced its learning rate by a factor of 0.1"
train.output_dir = "./output/lora_dino_r50_4scale_12ep"
