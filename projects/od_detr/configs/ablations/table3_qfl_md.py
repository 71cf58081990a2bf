"""Table 3 row 3 (= Table 4 row 1): MD with the multi-target QFL for classification only (46.4 AP)."""
from .table2_md import dataloader, lr_multiplier, model, optimizer, train

model.criterion.regression = False
train.output_dir = "./output/od_detr_ablation_table3_qfl_md"
