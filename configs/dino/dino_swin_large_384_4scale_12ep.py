"""DINO-4scale, Swin-L (384, ImageNet-22k), 12 epochs (56.8 AP as reported in OD-DETR Table 11):
DINO's R50 recipe (``dino_r50_4scale_12ep.py``) with the backbone of ``configs/common/backbones.py``."""
from ..common.backbones import use_swin_large
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

use_swin_large(model, train)
train.output_dir = "./output/dino_swin_large_384_4scale_12ep"
