"""Conditional DETR (``configs/models/conditional_detr_r50.py``) shrunk like ``deformable_detr_tiny.py``,
with the same data, schedule and seed. One level, as published, but res4 (stride 16, 8 x 8 cells at
128 px) instead of C5: at 128 px C5 is a 4 x 4 map."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from ..models.conditional_detr_r50 import model
from .deformable_detr_tiny import dataloader, lr_multiplier, optimizer, train
from .tiny_model import WIDTH, shrink

model = shrink(model)
model.backbone.out_features = ["res4"]
model.neck.update(in_features=["res4"], input_shapes={"res4": L(ShapeSpec)(channels=WIDTH * 4)}, num_outs=1)
optimizer.lr_factors = {}
train.output_dir = "./output/shapes_conditional_detr_tiny"
