"""Conditional DETR, R50, 300 queries, 50 epochs on COCO with the LR drop at epoch 40: the official recipe
(AdamW 1e-4, backbone 1e-5, weight decay 1e-4 on every parameter, clip 0.1, batch 16)."""
from ..common.coco_schedule import lr_multiplier_50ep as lr_multiplier
from ..common.optim import AdamW as optimizer
from ..common.train import train
from ..data.coco import dataloader
from ..models.conditional_detr_r50 import model

optimizer.lr = 1e-4
optimizer.lr_factors = {"backbone": 0.1}
optimizer.weight_decay_norm = 1e-4
optimizer.weight_decay_embedding = 1e-4
# ImageNet weights converted for detectron2 (torchvision R-50, RGB input); needs internet or a local copy.
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.max_iter = 50 * 7500
train.output_dir = "./output/conditional_detr_r50_50ep"
