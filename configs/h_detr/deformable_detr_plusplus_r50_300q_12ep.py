"""H-DETR's baseline: Deformable-DETR++ with 300 queries, R50, 12 epochs (published 47.0 AP)."""
from ..deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.num_queries = 300
train.output_dir = "./output/deformable_detr_plusplus_r50_300q_12ep"
