"""LoRA-DETR on the CPU-sized Deformable-DETR++ of ``configs/shapes/deformable_detr_tiny.py``
(synthetic shapes, d_model 128, 3 decoder layers, 100 queries): N_aux = 3, k {2, 4, 6}, rank 32.
N_aux = 1: ``model.variants.ks=[6]``. ``lora_detr_shapes_tiny_vfl_plus_baseline.py`` is this config
without the branches (same VFL+ primary loss and LR factors); the focal baseline is the core tiny
config itself.
"""
from ....configs.shapes.deformable_detr_tiny import dataloader, lr_multiplier, model, optimizer, train
from .models.lora_detr import lora_detr as _lora_detr  # "_": not itself a key of this config

model.update(_lora_detr)
optimizer.lr_factors.pop("sampling_offsets")  # the authors' code: full LR (only the box head x0.1)
optimizer.lr_factors.box_heads = 0.1
train.output_dir = "./output/lora_detr_shapes_tiny"
