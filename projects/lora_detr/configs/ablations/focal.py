"""Focal loss instead of VFL+ (Eq. 8) on the primary branch (class weight 2, the baseline's) and on
every auxiliary branch (Table 7: "+ Assignment-Quality Loss" is worth +0.5 AP)."""
from detectron2.config import LazyCall as _L

from detr_plus.modeling import FocalLoss as _FocalLoss

from ..lora_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.criterion.class_loss = _L(_FocalLoss)()
model.criterion.loss_weights["class"] = 2.0
model.variants.class_loss = "focal"
train.output_dir = "./output/lora_deformable_detr_r50_12ep_focal"
