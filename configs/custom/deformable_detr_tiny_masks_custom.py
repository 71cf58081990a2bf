"""``deformable_detr_tiny_custom.py`` with instance masks (``configs/common/masks.py``): your own COCO
data whose annotations have a "segmentation" (polygons or RLE); evaluation reports bbox and segm AP."""
from ..common.masks import use_mask_head
from .deformable_detr_tiny_custom import data, dataloader, lr_multiplier, model, optimizer, train  # noqa: F401
from ..shapes.tiny_model import TINY_MASK_HEAD as _TINY_MASK_HEAD  # "_": not itself a key of this config

use_mask_head(model, dataloader, **_TINY_MASK_HEAD)
train.output_dir = "./output/deformable_detr_tiny_masks_custom"
