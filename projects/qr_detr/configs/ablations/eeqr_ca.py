"""Table 4: EEQR_CA in every decoder layer (32.5 AP; the combined scheme: 43.1)."""
from ..qr_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.decoder.layer_wrapper.scheme = ["CA"]
train.output_dir = "./output/qr_detr_ablation_eeqr_ca"
