"""OD-DETR on Deformable-DETR++ (two-stage, mixed query selection, look-forward-twice), R50, 900
queries, 12 epochs. Query i's teacher twin is the teacher's query i (the same content embedding; the
two models select their own proposals), and its layers are not shared (DINO-like models lose AP with
a shared decoder: Appendix B, Table 9)."""
from ....configs.deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.od_detr import od_detr as _od_detr
from .models.od_detr import od_detr_ema as _od_detr_ema
from .models.od_detr import od_detr_hooks as _od_detr_hooks

model.update(_od_detr)
train.ema = _od_detr_ema
train.hooks = _od_detr_hooks
train.output_dir = "./output/od_deformable_detr_plusplus_r50_12ep"
