"""Ablation table row (2), "Share All": the o2m losses on the primary route's own predictions."""
from .mr_deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.routes = ["share_all"]
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep_share_all"
