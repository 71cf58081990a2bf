"""OD-DETR on the published Deformable DETR + box refinement ("Def-DETR+"), R50, 300 queries, 12 epochs:
matching distillation + prediction distillation + auxiliary groups (Table 2 row 4), shared decoder
(Appendix B: layers and heads), weight decay 2e-5 (Sec. 4.1), EMA teacher 0.9996 with Stop Update at the LR drop."""
from ....configs.deformable_detr.deformable_detr_refine_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.od_detr import od_detr as _od_detr
from .models.od_detr import od_detr_ema as _od_detr_ema
from .models.od_detr import od_detr_hooks as _od_detr_hooks

model.update(_od_detr)
model.transformer.decoder.share_layers = True  # Appendix B: "we choose to share decoder parameters in OD-DETR"
model.transformer.decoder.share_heads = True  # Table 8: 40.6M -> 34.7M needs the heads shared too (README reading 9)
optimizer.weight_decay = 2e-5  # Sec. 4.1 (README reading 8)
train.ema = _od_detr_ema
train.hooks = _od_detr_hooks
train.output_dir = "./output/od_deformable_detr_r50_12ep"
