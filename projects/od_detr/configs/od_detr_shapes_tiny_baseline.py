"""OD-DETR's baseline on CPU (Table 3 row "QFL w/o MD"): Def-DETR+ (box refinement, shared decoder
layers and heads as OD-DETR's, its weight decay 2e-5) shrunk by ``configs/shapes/tiny_model.py``, QFL as the class loss, no teacher; data,
schedule and seed of ``configs/shapes/deformable_detr_tiny.py``. It keeps an EMA (decay 0.99 as OD-DETR's tiny config, never
used for training) and the stability hook, to compare Fig. 1's curves with OD-DETR's."""
from ....configs.models.deformable_detr_refine_r50 import model
from ....configs.shapes.deformable_detr_plain_tiny import dataloader, lr_multiplier, optimizer, train
from ....configs.shapes.tiny_model import shrink
from .models.od_detr import od_detr_hooks as _od_detr_hooks
from .models.od_detr import qfl_criterion as _qfl_criterion

model = shrink(model)
model.transformer.decoder.share_layers = True
model.transformer.decoder.share_heads = True  # Table 8's parameter counts share the heads too (README reading 9)
optimizer.weight_decay = 2e-5  # Sec. 4.1 (README reading 8)
model.criterion = _qfl_criterion()
train.ema.update(enabled=True, decay=0.99)
train.hooks = _od_detr_hooks
train.hooks[0].update(num_images=32, period=100, min_size=128, max_size=160)
train.output_dir = "./output/od_detr_shapes_tiny_baseline"
