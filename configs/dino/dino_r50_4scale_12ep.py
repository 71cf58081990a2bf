"""DINO-4scale, R50, 12 epochs on COCO (published 49.0 AP; DINO's Table 1). The recipe of DINO's public
code: AdamW 1e-4 with the backbone at 1e-5 and nothing else scaled, weight decay 1e-4 on every
parameter (norms and embeddings included), gradient clip 0.1, batch 16, no warm-up, LR x0.1 after
epoch 11."""
from ..common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from ..common.optim import AdamW as optimizer
from ..common.train import train
from ..data.coco import dataloader
from ..models.dino_r50 import model

optimizer.lr = 1e-4
optimizer.lr_factors = {"backbone": 0.1}
optimizer.weight_decay_norm = 1e-4
optimizer.weight_decay_embedding = 1e-4
# ImageNet weights converted for detectron2 (torchvision R-50, RGB input); needs internet or a local copy.
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/dino_r50_4scale_12ep"
train.max_iter = 90000
