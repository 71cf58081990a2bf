"""Issue #11's diagnostic (not a paper's method): the one-to-one class loss becomes VFL+ with
s = IoU (LoRA-DETR Eq. 8, x0.25, class weight 1: LoRA-DETR's primary loss), the two-stage encoder
keeps the focal loss it had. Does an IoU-aware one-to-one target let the primary route score its
stacked near-copies apart? (Mr. DETR README, "Why the primary route lags".)"""
import copy

from detectron2.config import LazyCall as L

from detr_plus.modeling import VarifocalPlusLoss


def vfl_plus_primary(model):
    model.enc_criterion = copy.deepcopy(model.criterion)
    model.criterion.class_loss = L(VarifocalPlusLoss)(gamma=1.5, scale=0.25, quality="iou")
    model.criterion.loss_weights["class"] = 1.0
    return model
