"""Table 2 row 3: matching distillation + auxiliary groups (47.2 AP at 24 epochs)."""
from ..od_deformable_detr_r50_24ep import dataloader, lr_multiplier, model, optimizer, train

model.group_sources.prediction_distillation = False
train.output_dir = "./output/od_detr_ablation_table2_md_ag"
