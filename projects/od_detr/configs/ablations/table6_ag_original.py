"""Table 6: MD + auxiliary groups trained with the "original" matching (original 46.7, re-matching 47.0; MD 47.2 is table2_md_ag)."""
from .table2_md_ag import dataloader, lr_multiplier, model, optimizer, train

model.group_sources.ag_matching = "original"
train.output_dir = "./output/od_detr_ablation_table6_ag_original"
