"""Table 4: EEQR_F in every decoder layer (23.1 AP; the combined scheme: 43.1)."""
from ..qr_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.decoder.layer_wrapper.scheme = ["F"]
train.output_dir = "./output/qr_detr_ablation_eeqr_f"
