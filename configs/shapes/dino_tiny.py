"""DINO shrunk for 2 CPU cores on the embedded shapes dataset: ``configs/models/dino_r50.py`` through
``tiny_model.shrink`` (100 queries), with the schedule of ``deformable_detr_tiny.py`` (the ++ tiny,
its baseline) and DINO's optimizer choices (only the backbone's LR factor; here 1.0, as the tiny
backbone trains from scratch, so no factor at all; decay on every parameter). Denoising keeps
DINO's dn_number 100: a shapes image has at most a few objects, so about 100 denoising pairs."""
from .deformable_detr_tiny import dataloader, lr_multiplier, optimizer, train
from ..models.dino_r50 import model
from .tiny_model import shrink

model = shrink(model)
optimizer.lr_factors = {}
optimizer.weight_decay_norm = 1e-4
optimizer.weight_decay_embedding = 1e-4
train.output_dir = "./output/shapes_dino_tiny"
