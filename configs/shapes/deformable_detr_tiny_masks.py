"""The tiny Deformable-DETR++ of ``deformable_detr_tiny.py`` with instance masks (the shapes masks are
exact): the baseline of the shapes comparison with Mr. DETR's masks. The head is set for 128 px
images (``tiny_model.TINY_MASK_HEAD``: the stride-32 level, logits at stride 8, 1024 points)."""
from ..common.masks import use_mask_head
from .deformable_detr_tiny import dataloader, lr_multiplier, model, optimizer, train
from .tiny_model import TINY_MASK_HEAD as _TINY_MASK_HEAD  # "_": not itself a key of this config

use_mask_head(model, dataloader, **_TINY_MASK_HEAD)
train.output_dir = "./output/shapes_deformable_detr_tiny_masks"
