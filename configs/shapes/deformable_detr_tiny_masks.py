"""The tiny Deformable-DETR++ of ``deformable_detr_tiny.py`` with instance masks (the shapes masks are
exact): the baseline of the shapes comparison with Mr. DETR's masks. 1024 points per mask: a mask's
logits are 8 x 10 at 128 x 160 px."""
from ..common.masks import use_mask_head
from .deformable_detr_tiny import dataloader, lr_multiplier, model, optimizer, train

use_mask_head(model, dataloader, num_points=1024)
train.output_dir = "./output/shapes_deformable_detr_tiny_masks"
