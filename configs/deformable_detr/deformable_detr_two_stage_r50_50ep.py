"""Two-stage Deformable DETR with box refinement, 50 epochs (Zhu et al. Table 1: 46.2 AP)."""
from ..models.deformable_detr_two_stage_r50 import model
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train

optimizer.lr_factors.pop("reference_points")  # two-stage models have no reference-point layer
train.output_dir = "./output/deformable_detr_two_stage_r50_50ep"
