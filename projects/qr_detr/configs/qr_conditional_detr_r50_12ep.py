"""QR-DETR on Conditional DETR (QR-DETR Table 1: 36.6 -> 39.9 AP), R50, 12 epochs with QR-DETR's recipe
(Sec. 5.1: batch 8, LR x0.1 at epoch 11, as ``qr_deformable_detr_r50_12ep.py``) and Conditional DETR's
optimizer (AdamW 1e-4, backbone 1e-5); the combined EEQR scheme around the standard-attention blocks.
The baseline: ``configs/conditional_detr/conditional_detr_r50_12ep.py``."""
from ....configs.conditional_detr.conditional_detr_r50_12ep import model, optimizer
from .models.qr_detr import qr_exit_criteria as _qr_exit_criteria
from .models.qr_detr import qr_layer_wrapper as _qr_layer_wrapper
from .qr_deformable_detr_r50_12ep import dataloader, lr_multiplier, train

model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
model.extra_output_criteria = _qr_exit_criteria
train.output_dir = "./output/qr_conditional_detr_r50_12ep"
