"""Mr. DETR with instance masks on Deformable-DETR++ (300 queries), R50, 12 epochs (published 49.5 box /
36.0 mask AP): the mask head of every route's last layer is the baseline's, shared (one module)."""
from ....configs.common.masks import use_mask_head
from .mr_deformable_detr_plusplus_r50_12ep_300q import dataloader, lr_multiplier, model, optimizer, train

use_mask_head(model, dataloader)
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_300q_masks_12ep"
