from detectron2.config import LazyCall as L

from detr_plus.engine.optim import build_adamw

# Deformable DETR's recipe: backbone and sampling offsets at 0.1x the base LR (the single-stage
# configs add their 2-d ``reference_points`` layer, which two-stage models do not have).
AdamW = L(build_adamw)(
    model=None,  # set by train_net.py
    lr=2e-4,
    weight_decay=1e-4,
    betas=(0.9, 0.999),
    lr_factors={"backbone": 0.1, "sampling_offsets": 0.1},
)
