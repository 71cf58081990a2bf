"""Table 3 row 2: StageInteractor's conditional MD (extra matches with IoU > 0.5), focal loss (45.9 AP)."""
from detectron2.config import LazyCall as _L

from detr_plus.modeling import FocalLoss as _FocalLoss

from .table3_qfl_md import dataloader, lr_multiplier, model, optimizer, train

model.criterion.update(conditional_iou=0.5)
model.criterion.criterion.class_loss = _L(_FocalLoss)()
train.output_dir = "./output/od_detr_ablation_table3_conditional_md"
