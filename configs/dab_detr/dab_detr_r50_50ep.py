"""DAB-DETR, R50, 300 queries, 50 epochs on COCO with the LR drop at epoch 40: the official recipe, the
same as Conditional DETR's (AdamW 1e-4, backbone 1e-5, weight decay 1e-4 on every parameter, clip
0.1, batch 16)."""
from ..conditional_detr.conditional_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train
from ..models.dab_detr_r50 import model

train.output_dir = "./output/dab_detr_r50_50ep"
