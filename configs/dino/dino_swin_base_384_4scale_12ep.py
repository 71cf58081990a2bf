"""DINO-4scale, Swin-B (384 px weights), 12 epochs: DINO's R50 recipe (``dino_r50_4scale_12ep.py``)
with the Swin of ``configs/common/backbones.py``."""
from ..common.backbones import use_swin
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

use_swin(model, train, "base")
train.output_dir = "./output/dino_swin_base_384_4scale_12ep"
