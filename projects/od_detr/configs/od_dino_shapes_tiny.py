"""OD-DINO on the CPU DINO of ``configs/shapes/dino_tiny.py`` (its baseline): OD-DETR's terms with
DINO's loss weights, unshared decoder layers, and the EMA decay of ``od_detr_shapes_tiny.py`` (0.99:
the paper's 0.9996 is sized for COCO's 12 epochs)."""
from detr_plus.engine.compose import compose_methods

from ....configs.shapes.dino_tiny import dataloader, lr_multiplier, model, optimizer, train
from .models.od_detr import od_detr_ema as _od_detr_ema
from .models.od_detr import od_dino as _od_dino
from .od_detr_shapes_tiny_baseline import train as _tiny_od_train

compose_methods(model, od_detr=_od_dino)
train.ema = _od_detr_ema
train.ema.decay = 0.99
train.hooks = _tiny_od_train.hooks
train.output_dir = "./output/od_dino_shapes_tiny"
