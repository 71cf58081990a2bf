"""The published single-stage Deformable DETR (``configs/models/deformable_detr_r50.py``: static query
embedding, 2-d reference points, no box refinement) shrunk like ``deformable_detr_tiny.py``, with the
same data, schedule and seed: QR-DETR's baseline on CPU."""
from ..models.deformable_detr_r50 import model
from .deformable_detr_tiny import dataloader, lr_multiplier, optimizer, train
from .tiny_model import shrink

model = shrink(model)

optimizer.lr_factors = {"sampling_offsets": 0.1, "reference_points": 0.1}  # published: reference points x0.1
train.output_dir = "./output/shapes_deformable_detr_plain_tiny"
