"""Set-prediction criterion: a matcher plus classification and box losses, for one layer's predictions."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from . import losses
from .contracts import Indices, LossContext, Targets

LOSS_TERMS = ("class", "bbox", "giou")


class SetCriterion(nn.Module):
    """Weighted losses of one set of predictions against the targets (Deformable DETR's criterion).

    * ``class_loss``: a class-loss module (``contracts.ClassLoss``) given to it: ``FocalLoss()``
      (Lin et al., the default), ``VarifocalPlusLoss(...)`` (LoRA-DETR Eq. 8, the soft target of
      positives IoU or the matching score M of Eq. 7; its ``scale`` 0.25 as LoRA-DETR's public code,
      docs/authors_code_facts.md#lora-detr-vfl-and-loss-weights) or ``QualityFocalLoss(...)``
      (OD-DETR Eq. 2, IoU target); a method brings its own the same way;
    * L1 and GIoU box losses on matched pairs; every term is summed and divided by ``num_boxes``.

    ``forward`` returns ``({"loss_class": ..., "loss_bbox": ..., "loss_giou": ...}, indices)`` with the
    weights of ``loss_weights`` applied, and the matching indices so a method can reuse them.
    ``loss_terms`` is the same computation from given pairs, for methods whose targets come from
    more than one assignment (OD-DETR's matching distillation, Eq. 3-4).
    """

    def __init__(self, matcher, loss_weights: Optional[Dict[str, float]] = None, class_loss: Optional[nn.Module] = None):
        super().__init__()
        if isinstance(class_loss, str):
            raise TypeError(f"SetCriterion(class_loss={class_loss!r}): give a class-loss module, e.g. "
                            "detr_plus.modeling.FocalLoss(), VarifocalPlusLoss(...) or QualityFocalLoss(...)")
        self.matcher = matcher
        self.loss_weights = dict(loss_weights or {"class": 2.0, "bbox": 5.0, "giou": 2.0})
        unknown = set(self.loss_weights) - set(LOSS_TERMS)
        if unknown:
            raise ValueError(f"criterion.loss_weights has unknown keys {sorted(unknown)}; use {', '.join(LOSS_TERMS)}")
        self.class_loss = class_loss if class_loss is not None else losses.FocalLoss()

    def forward(self, logits, boxes, targets: Targets, num_boxes: float, indices: Optional[Indices] = None,
                valid: Optional[torch.Tensor] = None, context: Optional[LossContext] = None):
        """``valid`` (B, Q): False on padded queries (never matched or supervised); ``context`` is
        for criteria that need more than the predictions (unused here)."""
        if indices is None:
            indices = self.matcher(logits, boxes, targets, valid=valid)
        return self.loss_terms(logits, boxes, targets, num_boxes, [indices], indices, valid=valid), indices

    def loss_terms(self, logits, boxes, targets, num_boxes: float, class_indices: Sequence[Indices], box_indices: Indices,
                   box_weights: Optional[List[torch.Tensor]] = None, class_weights: Optional[Sequence[Optional[List[torch.Tensor]]]] = None,
                   valid: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The weighted losses for given pairs.

        * ``class_indices``: one or more assignments whose labels make the class targets. Several
          assignments give a query several labels (OD-DETR Eq. 3: a second class gets its own soft
          target); where two assignments label the same (query, class) entry, the earlier one's
          target is kept;
        * ``box_indices``: the pairs the L1 / GIoU losses regress, ``box_weights`` one weight per pair
          (per image), e.g. OD-DETR's w_d (Eq. 4);
        * ``class_weights``: per assignment, optional per-pair weights of that label's class term.
        """
        class_loss = self.class_loss_of(logits, boxes, targets, class_indices, class_weights)
        if valid is not None:
            class_loss = class_loss * valid[..., None].to(class_loss.dtype)
        batch_idx, query_idx, gt_boxes, _ = self.pairs(box_indices, targets)
        matched_boxes = boxes[batch_idx, query_idx]
        l1 = losses.l1_box_loss(matched_boxes, gt_boxes).sum(-1)
        giou = losses.giou_box_loss(matched_boxes, gt_boxes)
        if box_weights is not None:
            weight = torch.cat(list(box_weights)).to(l1.dtype) if box_weights else l1.new_zeros(0)
            l1, giou = l1 * weight, giou * weight
        terms = {"class": class_loss.sum() / num_boxes, "bbox": l1.sum() / num_boxes, "giou": giou.sum() / num_boxes}
        return {f"loss_{k}": v * self.loss_weights.get(k, 0.0) for k, v in terms.items()}

    @staticmethod
    def pairs(indices: Indices, targets):
        """Flattened (batch index, query index, GT box, GT label) of every pair."""
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        gt_boxes = torch.cat([t["boxes"][g] for t, (_, g) in zip(targets, indices)])
        gt_labels = torch.cat([t["labels"][g] for t, (_, g) in zip(targets, indices)])
        return batch_idx, query_idx, gt_boxes, gt_labels

    def class_loss_of(self, logits, boxes, targets, class_indices: Sequence[Indices], class_weights=None) -> torch.Tensor:
        """Elementwise class loss (B, Q, C) with the targets of every assignment in ``class_indices``."""
        onehot = torch.zeros_like(logits)
        quality = torch.zeros_like(logits) if self.class_loss.needs_quality else None
        weight = None
        # The first assignment has priority: write the others first, so it overwrites shared entries.
        for k in reversed(range(len(class_indices))):
            b, q, gt_boxes, labels = self.pairs(class_indices[k], targets)
            onehot[b, q, labels] = 1.0
            if quality is not None:
                quality[b, q, labels] = self.class_loss.positive_quality(logits[b, q, labels], boxes[b, q], gt_boxes)
            pair_weights = None if class_weights is None else class_weights[k]
            if pair_weights is not None and len(b):
                weight = torch.ones_like(logits) if weight is None else weight
                weight[b, q, labels] = torch.cat(list(pair_weights)).to(logits.dtype)
        loss = self.class_loss(logits, onehot, quality)
        return loss if weight is None else loss * weight
