"""Conditional DETR, R50, 12 epochs with the LR drop at epoch 11 (QR-DETR Table 1's schedule; no official
12-epoch run exists)."""
from ..common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from .conditional_detr_r50_50ep import dataloader, model, optimizer, train

train.max_iter = 12 * 7500
train.output_dir = "./output/conditional_detr_r50_12ep"
