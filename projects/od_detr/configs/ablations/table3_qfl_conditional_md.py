"""Table 3 row 4: the multi-target QFL with conditional MD (IoU > 0.5) (46.3 AP)."""
from .table3_qfl_md import dataloader, lr_multiplier, model, optimizer, train

model.criterion.conditional_iou = 0.5
train.output_dir = "./output/od_detr_ablation_table3_qfl_conditional_md"
