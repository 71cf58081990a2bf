"""Table 4: EEQR_SA in every decoder layer (40.6 AP; the combined scheme: 43.1)."""
from ..qr_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.decoder.layer_wrapper.scheme = ["SA"]
train.output_dir = "./output/qr_detr_ablation_eeqr_sa"
