"""Deformable-DETR++ with 300 queries and instance masks, R50, 24 epochs (48.6 box / 35.1 mask AP as
Mr. DETR reports it), LR x0.1 after epoch 20
(H-DETR's 24-epoch ++ schedule, on whose code Mr. DETR's builds)."""
from ..common.coco_schedule import ITERS_PER_EPOCH, multistep_lr
from .deformable_detr_plusplus_r50_300q_masks_12ep import dataloader, model, optimizer, train

train.max_iter = 24 * ITERS_PER_EPOCH
lr_multiplier = multistep_lr(train.max_iter, [20 * ITERS_PER_EPOCH])
train.output_dir = "./output/deformable_detr_plusplus_r50_300q_masks_24ep"
