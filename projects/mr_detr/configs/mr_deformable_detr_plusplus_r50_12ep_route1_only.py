"""Route ablation (project page): primary Route-2 + Route-1 (independent FFN) only."""
from .mr_deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.variants.routes = ["route1"]
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep_route1_only"
