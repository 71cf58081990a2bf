"""DINO-4scale, R101, 12 epochs: DINO's R50 recipe (``dino_r50_4scale_12ep.py``) with ResNet-101."""
from ..common.backbones import use_resnet101
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

use_resnet101(model, train)
train.output_dir = "./output/dino_r101_4scale_12ep"
