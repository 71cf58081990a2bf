"""Deformable-DETR++, R101, 12 epochs: the R50 recipe (``deformable_detr_plusplus_r50_12ep.py``) with ResNet-101."""
from ..common.backbones import use_resnet101
from .deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

use_resnet101(model, train)
train.output_dir = "./output/deformable_detr_plusplus_r101_12ep"
