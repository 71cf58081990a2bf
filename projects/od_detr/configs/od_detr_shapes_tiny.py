"""OD-DETR (MD + PD + AG, shared decoder) on Def-DETR+ shrunk for CPU (``configs/shapes/tiny_model.py``),
with the tiny schedule of ``configs/shapes/deformable_detr_tiny.py``; the baseline to compare with is
``od_detr_shapes_tiny_baseline.py`` (the same model with QFL, no teacher)."""
from .models.od_detr import od_detr as _od_detr
from .models.od_detr import od_detr_ema as _od_detr_ema
from .od_detr_shapes_tiny_baseline import dataloader, lr_multiplier, model, optimizer, train

model.update(_od_detr)
train.ema = _od_detr_ema
train.output_dir = "./output/od_detr_shapes_tiny"
