"""Table 4 row 4: w_d = 0.51 on classification and regression (46.7 AP; row 3, regression only, is table2_md)."""
from .table2_md import dataloader, lr_multiplier, model, optimizer, train

model.criterion.class_down_weight = 0.51
train.output_dir = "./output/od_detr_ablation_table4_down_weight_cls_and_reg"
