"""Ablation table row (1), "One-to-one only": the primary route alone, i.e. the baseline
Deformable-DETR++ (encoder loss weight and matching back to the baseline's), with the recipe's optimizer."""
from .mr_deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.routes = []
model.enc_loss_weight = 1.0
model.enc_anchor_matcher = None
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep_primary_only"
