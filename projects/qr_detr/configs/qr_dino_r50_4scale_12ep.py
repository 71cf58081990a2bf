"""QR-DETR's combined scheme on DINO-4scale, R50, 12 epochs with DINO's recipe (not in QR-DETR's
paper: it shows the layer wrapper composes with DINO's denoising groups, which the routers route
like any other query of the joint pass; the exit losses cover the matching queries only)."""
from ....configs.dino.dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train
from .models.qr_detr import qr_exit_criteria as _qr_exit_criteria
from .models.qr_detr import qr_hooks as _qr_hooks
from .models.qr_detr import qr_layer_wrapper as _qr_layer_wrapper

model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
model.extra_output_criteria = _qr_exit_criteria
train.hooks = _qr_hooks
train.output_dir = "./output/qr_dino_r50_4scale_12ep"
