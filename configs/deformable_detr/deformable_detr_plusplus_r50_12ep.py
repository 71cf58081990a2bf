"""Deformable-DETR++ (H-DETR's baseline), R50, 900 queries, 12 epochs (47.6 AP in LoRA-DETR Table 2)."""
from ..models.deformable_detr_plusplus_r50 import model
from .deformable_detr_two_stage_r50_12ep import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/deformable_detr_plusplus_r50_12ep"
