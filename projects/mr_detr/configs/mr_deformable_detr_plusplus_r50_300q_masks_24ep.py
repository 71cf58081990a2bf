"""Mr. DETR with instance masks, Deformable-DETR++ (300 queries), R50, 24 epochs (published 50.3 box /
37.6 mask AP), LR x0.1 after epoch 20
(H-DETR's 24-epoch ++ schedule, on whose code Mr. DETR's builds)."""
from ....configs.common.coco_schedule import ITERS_PER_EPOCH, multistep_lr
from .mr_deformable_detr_plusplus_r50_300q_masks_12ep import dataloader, model, optimizer, train

train.max_iter = 24 * ITERS_PER_EPOCH
lr_multiplier = multistep_lr(train.max_iter, [20 * ITERS_PER_EPOCH])
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_300q_masks_24ep"
