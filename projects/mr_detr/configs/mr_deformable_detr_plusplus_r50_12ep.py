"""Mr. DETR on Deformable-DETR++, R50, 900 queries, 12 epochs (project page headline: 47.6 -> 50.7 AP)."""
from ....configs.deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.mr_detr import mr_detr as _mr_detr  # "_": not itself a key of this config

model.update(_mr_detr)
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep"
