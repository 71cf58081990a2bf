"""Deformable-DETR++ shrunk for 2 CPU cores on the embedded shapes dataset (128 px images):
a thin ResNet-18 trained from scratch, d_model 128 (4 heads), 3 encoder + 3 decoder layers, 100 queries."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from detr_plus.modeling import resnet_stages

from ..common.coco_schedule import multistep_lr
from ..common.optim import AdamW as optimizer
from ..common.train import train
from ..data.shapes import dataloader
from ..models.deformable_detr_plusplus_r50 import model

WIDTH = 32  # ResNet-18 at half width: res3/res4/res5 have 64/128/256 channels
model.backbone.stem.out_channels = WIDTH
model.backbone.stem.norm = "BN"
model.backbone.stages = L(resnet_stages)(depth=18, base_channels=WIDTH, norm="BN")
model.backbone.freeze_at = 0
model.neck.input_shapes = {f"res{i}": L(ShapeSpec)(channels=WIDTH * 2 ** (i - 2)) for i in (3, 4, 5)}
model.neck.out_channels = 128
model.position_embedding.num_pos_feats = 64  # d_model / 2
model.neck.num_outs = 4
model.transformer.encoder.update(num_layers=3, d_model=128, d_ffn=512, num_heads=4)
model.transformer.decoder.update(num_layers=3, d_model=128, d_ffn=512, num_heads=4)
model.transformer.num_classes = 4
model.transformer.num_queries = 100
model.pixel_mean = (127.5, 127.5, 127.5)
model.pixel_std = (64.0, 64.0, 64.0)

optimizer.lr = 4e-4
optimizer.lr_factors = {"sampling_offsets": 0.1}  # the backbone trains from scratch at the full LR

train.max_iter = 1000  # ~8 min on 2 CPU cores; AP ~64 after 1500 iterations (README)
train.output_dir = "./output/shapes_deformable_detr_tiny"
train.eval_period = 500
train.log_period = 20
train.checkpointer = dict(period=500, max_to_keep=2)
lr_multiplier = multistep_lr(train.max_iter, [900], warmup_iters=50)
