"""Mr. DETR with instance masks, Deformable-DETR++ (300 queries), R50, 24 epochs (published 50.3 box /
37.6 mask AP), LR x0.1 after epoch 22."""
from ....configs.common.coco_schedule import ITERS_PER_EPOCH, lr_multiplier_24ep as lr_multiplier  # noqa: F401
from .mr_deformable_detr_plusplus_r50_300q_masks_12ep import dataloader, model, optimizer, train

train.max_iter = 24 * ITERS_PER_EPOCH
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_300q_masks_24ep"
