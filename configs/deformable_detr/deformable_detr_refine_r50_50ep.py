"""Deformable DETR + iterative box refinement, 50 epochs (Zhu et al. Table 1 and OD-DETR's baseline: 45.4 AP)."""
from ..models.deformable_detr_refine_r50 import model
from .deformable_detr_r50_50ep import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/deformable_detr_refine_r50_50ep"
