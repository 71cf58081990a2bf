"""Deformable-DETR++ shrunk for 2 CPU cores on the embedded shapes dataset (``tiny_model.shrink``)."""
from ..common.coco_schedule import multistep_lr
from ..common.optim import AdamW as optimizer
from ..common.train import train
from ..data.shapes import dataloader
from ..models.deformable_detr_plusplus_r50 import model
from .tiny_model import shrink

model = shrink(model)

optimizer.lr = 4e-4
optimizer.lr_factors = {"sampling_offsets": 0.1}  # the backbone trains from scratch at the full LR

train.max_iter = 1000  # ~8 min on 2 CPU cores
train.output_dir = "./output/shapes_deformable_detr_tiny"
train.eval_period = 500
train.log_period = 20
train.checkpointer = dict(period=500, max_to_keep=2)
lr_multiplier = multistep_lr(train.max_iter, [900], warmup_iters=50)
