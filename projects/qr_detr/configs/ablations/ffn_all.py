"""Sec. 5.4 c: the FFN on every query (as printed in Eq. 9-11) instead of only the routed ones."""
from ..qr_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.decoder.layer_wrapper.ffn_on = "all"
train.output_dir = "./output/qr_detr_ablation_ffn_all"
