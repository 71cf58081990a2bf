"""Table 3 row 2: StageInteractor's conditional MD (extra matches with IoU > 0.5), focal loss (45.9 AP)."""
from .table3_qfl_md import dataloader, lr_multiplier, model, optimizer, train

model.criterion.update(conditional_iou=0.5)
model.criterion.criterion.class_loss = "focal"
train.output_dir = "./output/od_detr_ablation_table3_conditional_md"
