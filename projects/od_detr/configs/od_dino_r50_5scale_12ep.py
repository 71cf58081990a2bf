"""OD-DINO-5scale, R50, 12 epochs (OD-DETR Table 1: 52.0 AP vs DINO-5scale's 49.4):
``od_dino_r50_4scale_12ep.py`` on DINO-5scale."""
from detr_plus.engine.compose import compose_methods

from ....configs.dino.dino_r50_5scale_12ep import model
from .models.od_detr import od_dino as _od_dino
from .od_dino_r50_4scale_12ep import dataloader, lr_multiplier, optimizer, train

compose_methods(model, od_detr=_od_dino)
train.output_dir = "./output/od_dino_r50_5scale_12ep"
