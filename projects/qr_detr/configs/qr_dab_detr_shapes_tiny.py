"""QR-DETR's combined scheme on the CPU DAB-DETR of ``configs/shapes/dab_detr_tiny.py`` (its baseline)."""
from ....configs.shapes.dab_detr_tiny import dataloader, lr_multiplier, model, optimizer, train
from .models.qr_detr import qr_exit_criteria as _qr_exit_criteria
from .models.qr_detr import qr_hooks as _qr_hooks
from .models.qr_detr import qr_layer_wrapper as _qr_layer_wrapper

model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
model.extra_output_criteria = _qr_exit_criteria
train.hooks = _qr_hooks
train.output_dir = "./output/qr_dab_detr_shapes_tiny"
