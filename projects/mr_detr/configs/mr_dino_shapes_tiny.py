"""Mr. DETR (Route-1 + Route-3, the authors' DINO recipe) on the CPU DINO of
``configs/shapes/dino_tiny.py``, its baseline (same schedule and seed)."""
from ....configs.shapes.dino_tiny import dataloader, lr_multiplier, model, optimizer, train
from .models.mr_detr import mr_detr as _mr_detr
from .models.mr_detr import on_dino as _on_dino

model.update(_mr_detr)
_on_dino(model)
model.variants.criterion.matcher.max_positives = 25  # the authors' constant cap: 0.25 x 100 queries
train.output_dir = "./output/mr_dino_shapes_tiny"
