"""DINO-4scale, R50, 24 epochs (published 50.4 AP), LR x0.1 after epoch 20 (detrex's DINO schedule)."""
from ..common.coco_schedule import ITERS_PER_EPOCH, multistep_lr
from .dino_r50_4scale_12ep import dataloader, model, optimizer, train

train.max_iter = 24 * ITERS_PER_EPOCH
lr_multiplier = multistep_lr(train.max_iter, [20 * ITERS_PER_EPOCH])
train.output_dir = "./output/dino_r50_4scale_24ep"
