"""Issue #11's diagnostic (not a paper's method): the one-to-one class loss becomes VFL+ with
s = IoU (LoRA-DETR Eq. 8, x0.25, class weight 1: LoRA-DETR's primary loss), the two-stage encoder
keeps the focal loss it had. Does an IoU-aware one-to-one target let the primary route score its
stacked near-copies apart? (Mr. DETR README, "Why the primary route lags".)"""
import copy


def vfl_plus_primary(model):
    model.enc_criterion = copy.deepcopy(model.criterion)
    model.criterion.update(class_loss="vfl_plus", quality="iou", vfl_gamma=1.5, vfl_scale=0.25)
    model.criterion.loss_weights["class"] = 1.0
    return model
