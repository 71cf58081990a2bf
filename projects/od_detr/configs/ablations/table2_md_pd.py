"""Table 2 row 2: matching + prediction distillation (47.3 AP at 24 epochs)."""
from ..od_deformable_detr_r50_24ep import dataloader, lr_multiplier, model, optimizer, train

model.group_sources.auxiliary_groups = False
train.output_dir = "./output/od_detr_ablation_table2_md_pd"
