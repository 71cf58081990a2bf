"""The tiny baseline with the one-to-one class loss VFL+ (``_vfl_plus_primary``): the baseline of
``mr_detr_vfl_plus_primary.py``."""
from .....configs.shapes.deformable_detr_tiny import dataloader, lr_multiplier, model, optimizer, train
from ._vfl_plus_primary import vfl_plus_primary as _vfl_plus_primary

model = _vfl_plus_primary(model)
train.output_dir = "./output/diagnostics/baseline_vfl_plus_primary"
