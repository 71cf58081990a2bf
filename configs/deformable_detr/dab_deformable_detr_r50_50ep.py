"""DAB-Deformable-DETR (learned 4-d anchors, positions from the boxes, box refinement), R50, 300
queries, 50 epochs (OD-DETR Table 1's DAB-Def-DETR*: 48.6 AP)."""
from ..models.dab_deformable_detr_r50 import model
from .deformable_detr_two_stage_r50_50ep import dataloader, lr_multiplier, optimizer, train

train.output_dir = "./output/dab_deformable_detr_r50_50ep"
