"""Deformable DETR as published, 50 epochs with the LR drop at epoch 40 (Zhu et al. Table 1: 43.8 AP)."""
from ..common.coco_schedule import ITERS_PER_EPOCH
from ..common.coco_schedule import lr_multiplier_50ep as lr_multiplier
from .deformable_detr_r50_12ep import dataloader, model, optimizer, train

train.max_iter = 50 * ITERS_PER_EPOCH
train.output_dir = "./output/deformable_detr_r50_50ep"
