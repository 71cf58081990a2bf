"""DINO-4scale, Swin-T (224 px weights), 12 epochs: DINO's R50 recipe (``dino_r50_4scale_12ep.py``)
with the Swin of ``configs/common/backbones.py``."""
from ..common.backbones import use_swin
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

use_swin(model, train, "tiny")
train.output_dir = "./output/dino_swin_tiny_224_4scale_12ep"
