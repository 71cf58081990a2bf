"""DAB-DETR (``configs/models/dab_detr_r50.py``) shrunk as ``conditional_detr_tiny.py`` (res4, one level)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from ..models.dab_detr_r50 import model
from .deformable_detr_tiny import dataloader, lr_multiplier, optimizer, train
from .tiny_model import WIDTH, shrink

model = shrink(model)
model.backbone.out_features = ["res4"]
model.neck.update(in_features=["res4"], input_shapes={"res4": L(ShapeSpec)(channels=WIDTH * 4)}, num_outs=1)
optimizer.lr_factors = {}
train.output_dir = "./output/shapes_dab_detr_tiny"
