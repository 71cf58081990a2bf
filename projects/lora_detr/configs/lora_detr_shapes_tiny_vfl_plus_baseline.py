"""The baseline of ``lora_detr_shapes_tiny.py`` with LoRA-DETR's primary loss: the same model,
primary criterion (Hungarian, VFL+ with s = IoU, x0.25, weights 1 / 5 / 2), LR factors and schedule,
and no auxiliary branch (N_aux = 0). Table 7 counts the assignment-quality loss as a step of its own
("+ Assignment-Quality Loss"), so against this config a LoRA-DETR run measures the branches alone.
"""
from .lora_detr_shapes_tiny import dataloader, lr_multiplier, model, optimizer, train

model.variants = None
train.output_dir = "./output/lora_detr_shapes_tiny_vfl_plus_baseline"
