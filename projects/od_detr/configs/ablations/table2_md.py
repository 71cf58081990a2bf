"""Table 2 row 1: matching distillation only (46.8 AP at 24 epochs)."""
from ..od_deformable_detr_r50_24ep import dataloader, lr_multiplier, model, optimizer, train

model.group_sources.update(prediction_distillation=False, auxiliary_groups=False)
train.output_dir = "./output/od_detr_ablation_table2_md"
