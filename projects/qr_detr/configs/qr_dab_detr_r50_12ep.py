"""QR-DETR on DAB-DETR (QR-DETR Table 1: 42.2 -> 43.7 AP), R50, 12 epochs with QR-DETR's recipe as
``qr_conditional_detr_r50_12ep.py``. The baseline: ``configs/dab_detr/dab_detr_r50_12ep.py``."""
from ....configs.dab_detr.dab_detr_r50_12ep import model
from .models.qr_detr import qr_exit_criteria as _qr_exit_criteria
from .models.qr_detr import qr_layer_wrapper as _qr_layer_wrapper
from .qr_conditional_detr_r50_12ep import dataloader, lr_multiplier, optimizer, train

model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
model.extra_output_criteria = _qr_exit_criteria
train.output_dir = "./output/qr_dab_detr_r50_12ep"
