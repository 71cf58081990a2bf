"""Table 3 row 1 / Table 2 row 0: Def-DETR+ with QFL, no distillation and no teacher (45.8 AP)."""
from ..models.od_detr import qfl_criterion as _qfl_criterion
from ..od_deformable_detr_r50_24ep import dataloader, lr_multiplier, model, optimizer, train

model.criterion, model.group_sources = _qfl_criterion(), {}
train.ema.enabled, train.hooks = False, []
train.output_dir = "./output/od_detr_ablation_table3_qfl_without_md"
