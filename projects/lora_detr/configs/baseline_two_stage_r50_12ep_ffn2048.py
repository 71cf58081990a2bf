"""LoRA-DETR's 300-query baseline (Table 2, 47.3M parameters): the published two-stage Deformable DETR
with box refinement (``configs/deformable_detr/deformable_detr_two_stage_r50_12ep.py``) with FFN 2048
in encoder and decoder, the model ``lora_deformable_detr_r50_12ep.py`` trains its branches on."""
from ....configs.deformable_detr.deformable_detr_two_stage_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.transformer.encoder.d_ffn = 2048
model.transformer.decoder.d_ffn = 2048
train.output_dir = "./output/lora_baseline_two_stage_r50_12ep_ffn2048"
