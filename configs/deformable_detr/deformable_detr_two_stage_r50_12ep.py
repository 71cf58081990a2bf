"""Two-stage Deformable DETR with box refinement as published, R50, 300 queries, 12 epochs."""
from ..models.deformable_detr_two_stage_r50 import model
from .deformable_detr_r50_12ep import dataloader, lr_multiplier, optimizer, train

optimizer.lr_factors.pop("reference_points")  # two-stage models have no reference-point layer
train.output_dir = "./output/deformable_detr_two_stage_r50_12ep"
