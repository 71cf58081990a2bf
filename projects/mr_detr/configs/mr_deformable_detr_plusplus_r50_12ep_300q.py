"""Mr. DETR on Deformable-DETR++ with 300 queries, R50, 12 epochs (papers/README.md: 49.5 AP)."""
from .mr_deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.num_queries = 300
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep_300q"
