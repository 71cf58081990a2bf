from ..common.coco_schedule import lr_multiplier_12ep as lr_multiplier
from ..common.optim import AdamW as optimizer
from ..common.train import train
from ..data.coco import dataloader
from ..models.deformable_detr_r50 import model

# ImageNet weights converted for detectron2 (torchvision R-50, RGB input); needs internet or a local copy.
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
train.output_dir = "./output/deformable_detr_r50_12ep"
train.max_iter = 90000
