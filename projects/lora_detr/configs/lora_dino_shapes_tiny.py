"""LoRA-DETR (N_aux = 3, k {2, 4, 6}, rank 32, branches x0.5 beside the denoising queries) on the CPU
DINO of ``configs/shapes/dino_tiny.py``, its baseline (same schedule and seed), with LoRA-DETR's
box-head LR x0.1."""
from ....configs.shapes.dino_tiny import dataloader, lr_multiplier, model, optimizer, train
from .models.lora_detr import lora_detr as _lora_detr

model.update(_lora_detr)
model.variants.loss_scale = 0.5  # Sec. 4: "we down-weight the auxiliary losses by a factor of 0.5"
optimizer.lr_factors.box_heads = 0.1
train.output_dir = "./output/lora_dino_shapes_tiny"
