"""Table 1 / 4 "Baseline": the published Deformable DETR with QR-DETR's recipe and no routing (38.3 AP)."""
from ..qr_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.decoder.layer_wrapper, model.extra_output_criteria, train.hooks = None, {}, []
train.output_dir = "./output/qr_detr_ablation_baseline"
