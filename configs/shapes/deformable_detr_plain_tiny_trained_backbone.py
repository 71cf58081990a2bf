"""the published single-stage Deformable DETR tiny (``deformable_detr_plain_tiny.py``) started from ``make train``'s backbone for 3000 iterations
(``tiny_model.start_from_trained_backbone``): the single-scale DETRs' comparison on shapes."""
from .deformable_detr_plain_tiny import dataloader, model, optimizer, train
from .tiny_model import start_from_trained_backbone

lr_multiplier = start_from_trained_backbone(train, optimizer)
train.output_dir = "./output/shapes_deformable_detr_plain_tiny_trained_backbone"
