"""H-Deformable-DETR, R50, 36 epochs (published 50.0 AP; the ++ baseline 49.0), LR x0.1 after epoch 30
(the 36-epoch drop of detrex's schedules; H-DETR's own 36-epoch script not checked here)."""
from ..common.coco_schedule import ITERS_PER_EPOCH, multistep_lr
from .h_deformable_detr_r50_12ep import dataloader, model, optimizer, train

train.max_iter = 36 * ITERS_PER_EPOCH
lr_multiplier = multistep_lr(train.max_iter, [30 * ITERS_PER_EPOCH])
train.output_dir = "./output/h_deformable_detr_r50_36ep"
