"""QR-Conditional-DETR tiny (``qr_conditional_detr_shapes_tiny.py``) with its baseline's recipe of
``configs/shapes/conditional_detr_tiny_trained_backbone.py``: ``make train``'s backbone, 3000 iterations."""
from ....configs.shapes.tiny_model import start_from_trained_backbone
from .qr_conditional_detr_shapes_tiny import dataloader, model, optimizer, train

lr_multiplier = start_from_trained_backbone(train, optimizer)
train.output_dir = "./output/qr_conditional_detr_shapes_tiny_trained_backbone"
