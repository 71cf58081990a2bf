"""Deformable DETR as published (single-stage, no box refinement), R50, 300 queries, 12 epochs on COCO
(QR-DETR's baseline, 38.3 AP). The paper's Table 1 row trains 50 epochs: ``..._50ep.py``."""
from ..common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from ..common.optim import AdamW as optimizer
from ..common.train import train
from ..data.coco import dataloader
from ..models.deformable_detr_r50 import model

optimizer.lr_factors.reference_points = 0.1  # the 2-d reference-point layer, as published
# ImageNet weights converted for detectron2 (torchvision R-50, RGB input); needs internet or a local copy.
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/deformable_detr_r50_12ep"
train.max_iter = 90000
