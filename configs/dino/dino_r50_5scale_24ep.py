"""DINO-5scale, R50, 24 epochs (published 51.3 AP), LR x0.1 after epoch 20."""
from ..models.dino_r50_5scale import model
from .dino_r50_4scale_24ep import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/dino_r50_5scale_24ep"
