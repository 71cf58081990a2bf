"""OD-DETR on Deformable-DETR++ (two-stage, mixed query selection, look-forward-twice), R50, 900
queries, 12 epochs. Query i's teacher twin is the teacher's query i: in training the student decodes
its own proposals at the encoder tokens the teacher selected (``select_teacher_proposals``), so twins
share a proposal; its layers are not shared (DINO-like models lose AP with
a shared decoder: Appendix B, Table 9)."""
from ....configs.deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.od_detr import od_detr as _od_detr
from .models.od_detr import od_detr_ema as _od_detr_ema
from .models.od_detr import od_detr_hooks as _od_detr_hooks

model.update(_od_detr)
optimizer.weight_decay = 2e-5  # Sec. 4.1 (README reading 8)
train.ema = _od_detr_ema
train.hooks = _od_detr_hooks
train.output_dir = "./output/od_deformable_detr_plusplus_r50_12ep"
