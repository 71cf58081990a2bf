"""Table 5: MD + prediction distillation "tood_listen2stu", teacher never frozen (no Stop Update) (naive 44.2, tood 46.5, tood_listen2stu 46.6, query_prior 46.9 AP)."""
from .table2_md_pd import dataloader, lr_multiplier, model, optimizer, train

model.group_sources.pd_mode = "tood_listen2stu"
train.ema.stop_update_iter = None
train.output_dir = "./output/od_detr_ablation_table5_pd_tood_listen2stu"
