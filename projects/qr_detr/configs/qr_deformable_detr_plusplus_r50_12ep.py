"""QR-DETR's combined scheme on Deformable-DETR++ (two-stage, mixed query selection, look-forward-twice,
900 queries), R50, 12 epochs with the ++ recipe."""
from ....configs.deformable_detr.deformable_detr_plusplus_r50_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.qr_detr import qr_exit_criteria as _qr_exit_criteria
from .models.qr_detr import qr_hooks as _qr_hooks
from .models.qr_detr import qr_layer_wrapper as _qr_layer_wrapper

model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
model.extra_output_criteria = _qr_exit_criteria
train.hooks = _qr_hooks
train.output_dir = "./output/qr_deformable_detr_plusplus_r50_12ep"
