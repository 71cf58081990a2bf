"""The baseline of ``lora_detr_shapes_tiny.py`` with LoRA-DETR's primary loss: the same model,
primary criterion (Hungarian, VFL+ with s = IoU, x0.25, weights 1 / 5 / 2), LR factors and schedule,
and no auxiliary branch (N_aux = 0). The paper's baselines are trained with VFL+ too ("For the
baseline trained with focal loss for classification, we adopt the assignment-quality loss proposed
in Eq. (8)"), so this isolates what the branches add.
"""
from .lora_detr_shapes_tiny import dataloader, lr_multiplier, model, optimizer, train

model.routes = None
train.output_dir = "./output/lora_detr_shapes_tiny_vfl_plus_baseline"
