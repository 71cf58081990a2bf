"""Mr. DETR's side of the mask comparison's recipe (``configs/shapes/deformable_detr_tiny_masks_trained.py``):
``mr_detr_shapes_tiny_masks.py`` from ``make train``'s checkpoint (the routes and the mask head from
scratch), 3000 iterations, the LR divided by 10 at 2700."""
from ....configs.shapes.tiny_model import PLUSPLUS_TINY_CHECKPOINT, multistep_lr
from .mr_detr_shapes_tiny_masks import dataloader, model, optimizer, train

train.init_checkpoint = PLUSPLUS_TINY_CHECKPOINT
train.max_iter = 3000
train.eval_period = 1000
lr_multiplier = multistep_lr(train.max_iter, [2700], warmup_iters=50)
train.output_dir = "./output/mr_detr_shapes_tiny_masks_trained"
