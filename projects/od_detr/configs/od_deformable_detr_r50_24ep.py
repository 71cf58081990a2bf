"""OD-DETR on Def-DETR+, 24 epochs (Table 1: 47.7 AP; the ablations of Tables 2-6 use this schedule)."""
from ....configs.common.coco_schedule import ITERS_PER_EPOCH
from ....configs.common.coco_schedule import lr_multiplier_24ep as lr_multiplier
from .od_deformable_detr_r50_12ep import dataloader, model, optimizer, train

train.max_iter = 24 * ITERS_PER_EPOCH
train.output_dir = "./output/od_deformable_detr_r50_24ep"
