"""Deformable-DETR++ with 300 queries and instance masks, R50, 12 epochs: the baseline of Mr. DETR's
instance-segmentation table (46.5 box / 32.4 mask AP as Mr. DETR reports it)."""
from ..common.masks import use_mask_head
from .deformable_detr_plusplus_r50_300q_12ep import dataloader, lr_multiplier, model, optimizer, train

use_mask_head(model, dataloader)
train.output_dir = "./output/deformable_detr_plusplus_r50_300q_masks_12ep"
