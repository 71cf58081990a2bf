"""Mr. DETR with instance masks on the tiny shapes Deformable-DETR++: the delta of
``mr_detr_shapes_tiny.py`` that ``configs/shapes/deformable_detr_tiny_masks.py`` adds to its baseline."""
from ....configs.common.masks import use_mask_head
from .mr_detr_shapes_tiny import dataloader, lr_multiplier, model, optimizer, train
from ....configs.shapes.tiny_model import TINY_MASK_HEAD as _TINY_MASK_HEAD  # "_": not itself a key of this config

use_mask_head(model, dataloader, **_TINY_MASK_HEAD)
train.output_dir = "./output/mr_detr_shapes_tiny_masks"
