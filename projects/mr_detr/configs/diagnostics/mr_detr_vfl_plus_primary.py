"""Mr. DETR on the tiny model with the one-to-one class loss VFL+ (``_vfl_plus_primary``); the
routes keep their focal loss."""
from ..mr_detr_shapes_tiny import dataloader, lr_multiplier, model, optimizer, train
from ._vfl_plus_primary import vfl_plus_primary as _vfl_plus_primary

model = _vfl_plus_primary(model)
train.output_dir = "./output/diagnostics/mr_detr_vfl_plus_primary"
