"""QR-DETR on the published Deformable DETR (single-stage, 300 queries), R50, 12 epochs with QR-DETR's
recipe (Sec. 5.1: AdamW 1e-4, backbone 1e-5, batch 8, LR x0.1 at epoch 11): combined EEQR scheme
(Table 1: 38.3 -> 43.1 AP). ``ablations/baseline.py`` is the baseline with the same recipe."""
from ....configs.common.coco_schedule import multistep_lr
from ....configs.deformable_detr.deformable_detr_r50_12ep import dataloader, model, optimizer, train
from .models.qr_detr import qr_exit_criteria as _qr_exit_criteria
from .models.qr_detr import qr_hooks as _qr_hooks
from .models.qr_detr import qr_layer_wrapper as _qr_layer_wrapper

ITERS_PER_EPOCH = 14786  # 118287 COCO train2017 images at batch 8
dataloader.train.total_batch_size = 8
optimizer.lr = 1e-4  # backbone x0.1 (1e-5), sampling offsets and reference points x0.1 as Deformable DETR
train.max_iter = 12 * ITERS_PER_EPOCH
lr_multiplier = multistep_lr(train.max_iter, [11 * ITERS_PER_EPOCH])
model.transformer.decoder.layer_wrapper = _qr_layer_wrapper
model.extra_output_criteria = _qr_exit_criteria
train.hooks = _qr_hooks
train.output_dir = "./output/qr_deformable_detr_r50_12ep"
