"""DINO-5scale, R50, 12 epochs (published 49.4 AP): the 4-scale recipe on the 5-level model."""
from ..models.dino_r50_5scale import model
from .dino_r50_4scale_12ep import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/dino_r50_5scale_12ep"
