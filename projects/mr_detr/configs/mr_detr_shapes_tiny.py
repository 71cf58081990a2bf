"""Mr. DETR (Route-1 + Route-3) on the tiny CPU Deformable-DETR++ of the shapes data set; same
schedule and seed as ``configs/shapes/deformable_detr_tiny.py``, the baseline to compare with."""
from ....configs.shapes.deformable_detr_tiny import dataloader, lr_multiplier, model, optimizer, train
from .models.mr_detr import mr_detr as _mr_detr  # "_": not itself a key of this config

model.update(_mr_detr)
model.variants.criterion.matcher.max_positives = 25  # the authors' constant cap: 0.25 x 100 queries
train.output_dir = "./output/mr_detr_shapes_tiny"
