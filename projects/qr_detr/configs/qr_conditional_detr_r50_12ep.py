"""QR-DETR on Conditional DETR (QR-DETR Table 1: 36.6 -> 39.9 AP), R50, 12 epochs with QR-DETR's recipe (Sec. 5.1:
AdamW 1e-4, backbone 1e-5, batch 8, LR x0.1 at epoch 11); the combined EEQR scheme around the
standard-attention blocks. The baseline: ``configs/conditional_detr/conditional_detr_r50_12ep.py``."""
from ....configs.conditional_detr.conditional_detr_r50_12ep import dataloader, model, optimizer, train
from ....configs.common.coco_schedule import multistep_lr
from .models.qr_detr import qr_exit_criteria as _qr_exit_criteria
from .models.qr_detr import qr_hooks as _qr_hooks
from .models.qr_detr import qr_layer_wrapper as _qr_layer_wrapper

ITERS_PER_EPOCH = 14786  # 118287 COCO train2017 images at batch 8
dataloader.train.total_batch_size = 8
train.max_iter = 12 * ITERS_PER_EPOCH
lr_multiplier = multistep_lr(train.max_iter, [11 * ITERS_PER_EPOCH])
model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
model.extra_output_criteria = _qr_exit_criteria
train.hooks = _qr_hooks
train.output_dir = "./output/qr_conditional_detr_r50_12ep"
