"""Mr. DETR on DINO-4scale, Swin-L (384, ImageNet-22k), 12 epochs (the paper's Swin-L table):
``mr_dino_r50_4scale_12ep.py`` with the Swin-L backbone of ``configs/common/backbones.py``."""
from ....configs.common.backbones import use_swin_large
from .mr_dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

use_swin_large(model, train)
train.output_dir = "./output/mr_dino_swin_large_384_4scale_12ep"
