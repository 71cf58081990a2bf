"""DINO-5scale, ResNet-50: ``dino_r50.py`` with a fifth feature level, res2 at stride 4 (the levels
are res2-res5 and a stride-64 level made from res5)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from .dino_r50 import model

model.backbone.out_features = ["res2", "res3", "res4", "res5"]
model.neck.input_shapes = {f"res{i}": L(ShapeSpec)(channels=256 * 2 ** (i - 2)) for i in (2, 3, 4, 5)}
model.neck.in_features = ["res2", "res3", "res4", "res5"]
model.neck.num_outs = 5
model.transformer.num_feature_levels = 5
model.transformer.encoder.num_levels = 5
model.transformer.decoder.num_levels = 5
