"""The published Deformable DETR + iterative box refinement (``configs/models/deformable_detr_refine_r50.py``)
shrunk like ``deformable_detr_plain_tiny.py``, with the same data, schedule and seed: the model
under OD-DETR's baseline, on CPU."""
from ..models.deformable_detr_refine_r50 import model
from .deformable_detr_plain_tiny import dataloader, lr_multiplier, optimizer, train
from .tiny_model import shrink

model = shrink(model)

train.output_dir = "./output/shapes_deformable_detr_refine_tiny"
