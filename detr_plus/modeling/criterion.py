"""Set-prediction criterion: a matcher plus classification and box losses, for one layer's predictions."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..layers.box_ops import box_cxcywh_to_xyxy, paired_box_iou
from . import losses as L

CLASS_LOSSES = ("focal", "vfl_plus", "qfl")


class SetCriterion(nn.Module):
    """Weighted losses of one set of predictions against the targets (Deformable DETR's criterion).

    * ``class_loss``: "focal" (Lin et al.), "vfl_plus" (LoRA-DETR Eq. 8, soft target ``quality``)
      or "qfl" (OD-DETR Eq. 2, IoU target);
    * ``quality``: the soft target of positives, "iou" (IoU with the matched GT, the o2o choice) or
      "matching_score" (M of LoRA-DETR Eq. 7, the o2m choice; uses ``quality_class_weight``);
    * L1 and GIoU box losses on matched pairs; every term is summed and divided by ``num_boxes``.

    ``forward`` returns ``({"loss_class": ..., "loss_bbox": ..., "loss_giou": ...}, indices)`` with the
    weights of ``loss_weights`` applied, and the matching indices so a method can reuse them.
    """

    def __init__(self, matcher, loss_weights: Optional[Dict[str, float]] = None, class_loss="focal", quality="iou",
                 focal_alpha=0.25, focal_gamma=2.0, vfl_gamma=1.5, qfl_gamma=2.0, quality_class_weight=0.3):
        super().__init__()
        if class_loss not in CLASS_LOSSES:
            raise ValueError(f"criterion.class_loss={class_loss!r}: expected one of {CLASS_LOSSES}")
        if quality not in ("iou", "matching_score"):
            raise ValueError(f"criterion.quality={quality!r}: expected 'iou' or 'matching_score'")
        self.matcher = matcher
        self.loss_weights = dict(loss_weights or {"class": 2.0, "bbox": 5.0, "giou": 2.0})
        unknown = set(self.loss_weights) - {"class", "bbox", "giou"}
        if unknown:
            raise ValueError(f"criterion.loss_weights has unknown keys {sorted(unknown)}; use class, bbox, giou")
        self.class_loss, self.quality = class_loss, quality
        self.focal_alpha, self.focal_gamma, self.vfl_gamma, self.qfl_gamma = focal_alpha, focal_gamma, vfl_gamma, qfl_gamma
        self.quality_class_weight = quality_class_weight

    def forward(self, logits, boxes, targets: List[Dict[str, torch.Tensor]], num_boxes: float, indices=None) -> Tuple[Dict, List]:
        if indices is None:
            indices = self.matcher(logits, boxes, targets)
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        gt_labels = torch.cat([t["labels"][g] for t, (_, g) in zip(targets, indices)])
        gt_boxes = torch.cat([t["boxes"][g] for t, (_, g) in zip(targets, indices)])
        matched_boxes = boxes[batch_idx, query_idx]

        onehot = torch.zeros_like(logits)
        onehot[batch_idx, query_idx, gt_labels] = 1.0
        if self.class_loss == "focal":
            class_loss = L.sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)
        else:
            quality = torch.zeros_like(logits)
            quality[batch_idx, query_idx, gt_labels] = self.positive_quality(logits[batch_idx, query_idx, gt_labels], matched_boxes, gt_boxes)
            if self.class_loss == "vfl_plus":
                class_loss = L.vfl_plus_loss(logits, quality, onehot.bool(), self.vfl_gamma)
            else:
                class_loss = L.quality_focal_loss(logits, quality, self.qfl_gamma)
        terms = {
            "class": class_loss.sum() / num_boxes,
            "bbox": L.l1_box_loss(matched_boxes, gt_boxes).sum() / num_boxes,
            "giou": L.giou_box_loss(matched_boxes, gt_boxes).sum() / num_boxes,
        }
        return {f"loss_{k}": v * self.loss_weights.get(k, 0.0) for k, v in terms.items()}, indices

    @torch.no_grad()
    def positive_quality(self, matched_logits, matched_boxes, gt_boxes):
        """Soft target of each matched pair: IoU, or M = a * class prob + (1 - a) * IoU (LoRA-DETR Eq. 7)
        computed on the pairs alone (the same values as ``matcher.matching_quality`` at those entries)."""
        iou = paired_box_iou(box_cxcywh_to_xyxy(matched_boxes.float()), box_cxcywh_to_xyxy(gt_boxes.float()))
        if self.quality == "iou":
            return iou.to(matched_logits.dtype)
        score = self.quality_class_weight * matched_logits.float().sigmoid() + (1 - self.quality_class_weight) * iou
        return score.to(matched_logits.dtype)
