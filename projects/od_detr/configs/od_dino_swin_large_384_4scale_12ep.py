"""OD-DINO-4scale, Swin-L (384, ImageNet-22k), 12 epochs (OD-DETR Table 11: 57.7 AP vs DINO's 56.8):
``od_dino_r50_4scale_12ep.py`` with the Swin-L backbone of ``configs/common/backbones.py``."""
from ....configs.common.backbones import use_swin_large
from .od_dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

use_swin_large(model, train)
train.output_dir = "./output/od_dino_swin_large_384_4scale_12ep"
