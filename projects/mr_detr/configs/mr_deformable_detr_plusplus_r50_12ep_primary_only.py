"""Ablation table row (1), "One-to-one only": the primary route alone, i.e. the baseline
Deformable-DETR++ (encoder loss weight back to the baseline's 1)."""
from .mr_deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.routes.routes = []
model.enc_loss_weight = 1.0
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep_primary_only"
