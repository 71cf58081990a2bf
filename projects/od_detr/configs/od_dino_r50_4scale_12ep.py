"""OD-DINO-4scale, R50, 12 epochs (OD-DETR Table 1: 50.4 AP vs DINO's 49.0): OD-DETR's terms composed
onto DINO (``configs/dino/dino_r50_4scale_12ep.py``) with DINO's recipe (Sec. 4.1: "The learning rates
and batch sizes for OD-DINO follow their respective baselines") and DINO's loss weights (README reading
14). DINO's denoising groups stay as they are, trained by the student only: the teacher's pass decodes
the matching queries alone (``detection_pass``), so none of the distillation reads a denoising query
(reading 15). Decoder layers are not shared (Appendix B, Table 9: sharing costs OD-DINO 0.5 AP)."""
from detr_plus.engine.compose import compose_methods

from ....configs.dino.dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.od_detr import od_detr_ema as _od_detr_ema
from .models.od_detr import od_detr_hooks as _od_detr_hooks
from .models.od_detr import od_dino as _od_dino

compose_methods(model, od_detr=_od_dino)  # DINO's "dn" group source and OD-DETR's "pd" / "ag" side by side
train.ema = _od_detr_ema
train.hooks = _od_detr_hooks
train.output_dir = "./output/od_dino_r50_4scale_12ep"
