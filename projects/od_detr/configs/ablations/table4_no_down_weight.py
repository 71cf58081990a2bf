"""Table 4 row 2: MD on classification and regression without w_d (46.6 AP)."""
from .table2_md import dataloader, lr_multiplier, model, optimizer, train

model.criterion.box_down_weight = 1.0
train.output_dir = "./output/od_detr_ablation_table4_no_down_weight"
