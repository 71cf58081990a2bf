"""Mr. DETR on two-stage Deformable-DETR with box refinement, R50, 300 queries, 12 epochs."""
from ....configs.deformable_detr.deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.mr_detr import mr_detr as _mr_detr  # "_": not itself a key of this config

model.update(_mr_detr)
train.output_dir = "./output/mr_deformable_detr_r50_12ep"
