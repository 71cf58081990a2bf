"""H-Deformable-DETR, R50, 12 epochs (published 48.7 AP; its baseline 47.0:
``deformable_detr_plusplus_r50_300q_12ep.py``). The ++ recipe: AdamW 2e-4, backbone and sampling
offsets x0.1, LR x0.1 after epoch 11."""
from ..deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, optimizer, train
from ..models.h_deformable_detr_r50 import model

train.output_dir = "./output/h_deformable_detr_r50_12ep"
