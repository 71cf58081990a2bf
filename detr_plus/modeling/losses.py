"""Elementwise detection losses.

Every function returns the UNREDUCED elementwise loss; the criterion sums and
normalises (e.g. by the number of GT boxes). Soft targets (quality / IoU) are
detached: gradients flow only through the predictions.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

from ..layers.box_ops import box_cxcywh_to_xyxy, paired_box_iou, paired_giou_loss

__all__ = [
    "sigmoid_focal_loss",
    "l1_box_loss",
    "giou_box_loss",
    "vfl_plus_loss",
    "quality_focal_loss",
    "multi_target_quality_focal_loss",
    "FocalLoss",
    "VarifocalPlusLoss",
    "QualityFocalLoss",
]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", Eq. 5).

    FL = -alpha_t (1 - p_t)^gamma log(p_t); thin wrapper on torchvision's version.
    logits, targets: same shape (targets in {0, 1}, any dtype). Returns that shape.
    """
    return _tv_sigmoid_focal_loss(logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma,
                                  reduction="none")


def l1_box_loss(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """L1 box regression loss (DETR): |b - b_gt| per coordinate, (N, 4) -> (N, 4)."""
    return F.l1_loss(pred_cxcywh, target_cxcywh.detach(), reduction="none")


def giou_box_loss(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> torch.Tensor:
    """GIoU loss 1 - GIoU(b, b_gt) (Rezatofighi et al., 2019) for N box pairs -> (N,)."""
    return paired_giou_loss(box_cxcywh_to_xyxy(pred_cxcywh), box_cxcywh_to_xyxy(target_cxcywh.detach()))


def vfl_plus_loss(logits: torch.Tensor, quality: torch.Tensor, positive_mask: torch.Tensor,
                  gamma: float = 1.5, scale: float = 1.0) -> torch.Tensor:
    """Assignment-quality loss VFL+ (LoRA-DETR, Eq. 8), times ``scale``.

    With p = sigmoid(logits):
      positives (y = 1): -s log(p) - (1 - s) log(1 - p)   (BCE with soft target s = quality)
      negatives (y = 0): -p^gamma log(1 - p)

    ``scale`` multiplies every term (default 1: Eq. 8 as printed). LoRA-DETR's public code multiplies
    the VFL+ terms by 0.25 before the sum / GT count (docs/authors_code_facts.md#lora-detr-vfl-and-loss-weights),
    which the paper does not print; ``scale=0.25`` reproduces it.

    logits, quality, positive_mask: all (N, C); quality is ignored where the mask is False.
    Returns (N, C). Computed from logits (softplus / logsigmoid), so it is stable for large |logits|.
    """
    positive_mask = positive_mask.bool()
    target = torch.where(positive_mask, quality.detach().to(logits.dtype), torch.zeros_like(logits))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    # p^gamma = exp(gamma * log sigmoid(x)); for negatives bce = -log(1 - p).
    neg_weight = torch.exp(gamma * F.logsigmoid(logits))
    loss = torch.where(positive_mask, bce, neg_weight * bce)
    return loss if scale == 1.0 else loss * scale


def quality_focal_loss(logits: torch.Tensor, quality_targets: torch.Tensor,
                       gamma: float = 2.0) -> torch.Tensor:
    """Quality focal loss (OD-DETR Eq. 2; Li et al., GFL):

      L_QFL(s, t) = -|t - s|^gamma ((1 - t) log(1 - s) + t log(s)),  s = sigmoid(logits)

    quality_targets t: same shape as logits, the IoU target at a positive's class entry
    and 0 everywhere else (negatives). Returns the elementwise loss (same shape).
    """
    t = quality_targets.detach().to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    return (t - logits.sigmoid()).abs().pow(gamma) * bce


def multi_target_quality_focal_loss(logits: torch.Tensor, target_a: torch.Tensor,
                                    target_b: torch.Tensor, gamma: float = 2.0,
                                    mask_a: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-target QFL L_MQF (OD-DETR Eq. 3, Fig. 4).

    target_a (N, C): the student's own (Hungarian) label vector: IoU t at the matched GT's
        class entry, 0 elsewhere (all-zero row for unmatched queries).
    target_b (N, C): the label vector from the EMA teacher's matching: IoU t' (between the
        student's box and the teacher-matched GT) at that GT's class entry; all-zero rows
        where the query has no teacher-matched GT.
    mask_a (N, C) bool, optional: entries where target_a holds a label; default target_a > 0.

    Semantics: the two label vectors are merged into one multi-hot soft label, and Eq. 2 is
    applied to every class entry (as QFL is for the usual one-hot label vector):
      * two different classes: entry c gets t, entry c' gets t' -> L_QFL(s, t) + L_QFL(s', t')
        (+ the negative terms of all other classes);
      * one class (same class, or only one of the two labels present): the entry keeps the
        student's own target t (teacher's t' is used only if the student has no label there),
        i.e. L_MQF reduces to Eq. 2.
    A positive with t = 0 contributes exactly like a negative in Eq. 2, so the default mask
    (target_a > 0) only differs from an exact mask in that degenerate case.
    Returns (N, C).
    """
    if mask_a is None:
        mask_a = target_a > 0
    merged = torch.where(mask_a.bool(), target_a, target_b)
    return quality_focal_loss(logits, merged, gamma=gamma)


# --- class losses a SetCriterion is given (contracts.ClassLoss) ------------------------------------
@torch.no_grad()
def matched_iou(matched_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """IoU of each matched (predicted, GT) box pair, both (N, 4) normalized cxcywh, in float32."""
    return paired_box_iou(box_cxcywh_to_xyxy(matched_boxes.float()), box_cxcywh_to_xyxy(gt_boxes.float()))


class FocalLoss(nn.Module):
    """Sigmoid focal loss with one-hot targets (Deformable DETR's class loss)."""

    needs_quality = False

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits, onehot, quality=None):
        return sigmoid_focal_loss(logits, onehot, self.alpha, self.gamma)

    def extra_repr(self):
        return f"alpha={self.alpha}, gamma={self.gamma}"


class VarifocalPlusLoss(nn.Module):
    """VFL+ (LoRA-DETR Eq. 8) with the soft target ``quality`` of each positive: "iou" (IoU with the
    matched GT, the one-to-one choice) or "matching_score" (M = a * class prob + (1 - a) * IoU of
    Eq. 7, the one-to-many choice, a = ``quality_class_weight``); ``scale`` multiplies every term
    (LoRA-DETR's public code: 0.25)."""

    needs_quality = True
    QUALITIES = ("iou", "matching_score")

    def __init__(self, gamma: float = 1.5, scale: float = 1.0, quality: str = "iou", quality_class_weight: float = 0.3):
        super().__init__()
        if quality not in self.QUALITIES:
            raise ValueError(f"VarifocalPlusLoss quality={quality!r}: expected one of {self.QUALITIES}")
        self.gamma, self.scale, self.quality, self.quality_class_weight = gamma, scale, quality, quality_class_weight

    @torch.no_grad()
    def positive_quality(self, matched_logits, matched_boxes, gt_boxes):
        """Soft target of each matched pair, computed on the pairs alone (the same values as
        ``matcher.matching_quality`` at those entries)."""
        iou = matched_iou(matched_boxes, gt_boxes)
        if self.quality == "iou":
            return iou.to(matched_logits.dtype)
        score = self.quality_class_weight * matched_logits.float().sigmoid() + (1 - self.quality_class_weight) * iou
        return score.to(matched_logits.dtype)

    def forward(self, logits, onehot, quality):
        return vfl_plus_loss(logits, quality, onehot.bool(), self.gamma, self.scale)

    def extra_repr(self):
        return f"gamma={self.gamma}, scale={self.scale}, quality={self.quality}"


class QualityFocalLoss(nn.Module):
    """QFL (OD-DETR Eq. 2) with the IoU of each positive with its matched GT as the target."""

    needs_quality = True

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    @torch.no_grad()
    def positive_quality(self, matched_logits, matched_boxes, gt_boxes):
        return matched_iou(matched_boxes, gt_boxes).to(matched_logits.dtype)

    def forward(self, logits, onehot, quality):
        return quality_focal_loss(logits, quality, self.gamma)

    def extra_repr(self):
        return f"gamma={self.gamma}"
