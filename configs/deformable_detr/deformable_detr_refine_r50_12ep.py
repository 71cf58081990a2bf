"""Deformable DETR + iterative box refinement ("Def-DETR+"), R50, 300 queries, 12 epochs."""
from ..models.deformable_detr_refine_r50 import model
from .deformable_detr_r50_12ep import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/deformable_detr_refine_r50_12ep"
