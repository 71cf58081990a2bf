"""Mr. DETR on Deformable-DETR++, R50, 900 queries, 12 epochs (project page headline: 47.6 -> 50.7 AP),
with the optimizer of the authors' recipe: AdamW lr 1e-4 (backbone x0.1 only), weight decay 1e-4,
clip 0.1, batch 16, LR drop at epoch 11, no warm-up (docs/authors_code_facts.md#mr-detr-losses-initialisation-and-recipe)."""
from ....configs.deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.mr_detr import mr_detr as _mr_detr  # "_": not itself a key of this config

model.update(_mr_detr)
optimizer.lr = 1e-4
optimizer.lr_factors = {"backbone": 0.1}  # sampling offsets at the full LR
lr_multiplier.warmup_length = 0.0
train.output_dir = "./output/mr_deformable_detr_plusplus_r50_12ep"
