"""Matching distillation (OD-DETR Sec. 3.2, Fig. 3-4, Eq. 3-4): every student query learns from its
own Hungarian target and from the target its teacher twin (the same query index) was matched to."""
from typing import List, Optional, Tuple

import torch
from torch import nn

from detr_plus.layers.box_ops import box_cxcywh_to_xyxy, paired_box_iou
from detr_plus.modeling import SetCriterion

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


class MatchingDistillation(nn.Module):
    """A criterion around a ``SetCriterion`` (QFL, Eq. 2, for OD-DETR) that adds the teacher's matching.

    * Classification (Eq. 3, multi-target QFL): the class targets of both assignments; a query whose
      two GTs have different classes gets both entries (IoU targets t and t'), one whose GTs share a
      class keeps its own target t. ``classification=False``: own targets only.
    * Regression (Eq. 4): a query with its own match regresses to it; a query with only a
      teacher-derived match regresses to that one; where a GT ends up with two queries, the one with
      the larger matching cost (the base matcher's cost) is weighted ``box_down_weight`` (w_d = 0.51).
      ``regression=False``: own pairs only (Table 4 row 1); ``box_down_weight=1``: no down-weight
      (row 2); ``class_down_weight``: w_d on the class term of the same pairs too (row 4).
    * ``conditional_iou``: keep a teacher-derived pair only when the student's box has IoU above it
      with that GT (StageInteractor's "Conditional MD", Table 3, 0.5).

    The teacher's assignment comes from the ``LossContext``: a query group's
    ``extras["teacher_indices"]`` (OD-DETR's auxiliary groups), else the EMA teacher's assignment of
    the same decoder layer (the primary queries: query i's twin is the teacher's query i). Where
    neither exists (the encoder loss) this is the base criterion.
    """

    requires_teacher = True

    def __init__(self, criterion: SetCriterion, classification=True, regression=True, conditional_iou: Optional[float] = None,
                 box_down_weight: float = 0.51, class_down_weight: Optional[float] = None):
        super().__init__()
        self.criterion = criterion
        self.classification, self.regression = classification, regression
        self.conditional_iou, self.box_down_weight, self.class_down_weight = conditional_iou, box_down_weight, class_down_weight

    @property
    def matcher(self):
        return self.criterion.matcher

    @staticmethod
    def teacher_indices(context) -> Optional[Indices]:
        if context is None:
            return None
        if context.group is not None:
            return context.group.extras.get("teacher_indices")
        teacher = getattr(context.batch, "teacher", None)
        if teacher is None or not isinstance(context.layer, int) or teacher.matching is None:
            return None
        return teacher.matching[context.layer]

    def forward(self, logits, boxes, targets, num_boxes, indices=None, valid=None, context=None):
        own = indices if indices is not None else self.matcher(logits, boxes, targets, valid=valid)
        teacher = self.teacher_indices(context)
        if teacher is None:
            return self.criterion.loss_terms(logits, boxes, targets, num_boxes, [own], own, valid=valid), own
        if self.conditional_iou is not None:
            teacher = self.condition(boxes, targets, teacher)
        box_pairs, counting, down = own, None, None
        if self.regression or self.class_down_weight is not None:
            box_pairs, counting, down = self.regression_pairs(logits, boxes, targets, own, teacher)
        box_weights = None
        if self.regression:  # w_d on the down-weighted pairs, 0 on the teacher pairs that do not count
            box_weights = [torch.where(d, self.box_down_weight, 1.0).to(boxes.dtype) * c for d, c in zip(down, counting)]
        class_indices = [own, teacher] if self.classification else [own]
        class_weights = None
        if self.class_down_weight is not None:
            class_weights = self.class_pair_weights(own, teacher, box_pairs, down)[: len(class_indices)]
        if not self.regression:
            box_pairs = own
        terms = self.criterion.loss_terms(logits, boxes, targets, num_boxes, class_indices, box_pairs, box_weights=box_weights,
                                          class_weights=class_weights, valid=valid)
        return terms, own

    def condition(self, boxes, targets, teacher: Indices) -> Indices:
        """The teacher-derived pairs whose student box has IoU > ``conditional_iou`` with the GT."""
        kept = []
        for b, (q, g) in enumerate(teacher):
            iou = paired_box_iou(box_cxcywh_to_xyxy(boxes[b, q].float()), box_cxcywh_to_xyxy(targets[b]["boxes"][g].float()))
            keep = iou > self.conditional_iou
            kept.append((q[keep], g[keep]))
        return kept

    @torch.no_grad()
    def regression_pairs(self, logits, boxes, targets, own: Indices, teacher: Indices):
        """Eq. 4's pairs per image: the own pairs, then the teacher-derived pairs; whether each pair
        counts (a teacher pair of a query with an own match does not), and which counting pairs are
        down-weighted: a pair whose GT has another counting pair of lower cost. The teacher pairs
        that do not count stay in the list (weight 0) instead of being cut out: cutting by a
        boolean mask would make the host wait for the GPU, per image and layer."""
        pairs, counts, down = [], [], []
        for b, ((oq, og), (tq, tg)) in enumerate(zip(own, teacher)):
            has_own = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            has_own[oq] = True
            q, g = torch.cat([oq, tq]), torch.cat([og, tg])
            counting = torch.cat([torch.ones_like(oq, dtype=torch.bool), ~has_own[tq]])
            pairs.append((q, g))
            (cost,) = self.matcher.pair_costs(logits[b : b + 1], boxes[b : b + 1], targets[b : b + 1], [(q, g)])
            order = torch.arange(len(q), device=q.device)
            same_gt = (g[:, None] == g[None, :]) & counting[None, :]
            cheaper = (cost[None, :] < cost[:, None]) | ((cost[None, :] == cost[:, None]) & (order[None, :] < order[:, None]))
            counts.append(counting)
            down.append((same_gt & cheaper).any(1) & counting)
        return pairs, counts, down

    def class_pair_weights(self, own: Indices, teacher: Indices, box_pairs: Indices, down: List[torch.Tensor]):
        """w_d on the class entry of every down-weighted (query, GT) pair, in the assignment it belongs to."""
        weights = []
        for indices in (own, teacher):
            per_image = []
            for (q, g), (pq, pg), d in zip(indices, box_pairs, down):
                hit = (q[:, None] == pq[None, :]) & (g[:, None] == pg[None, :]) & d[None, :]
                per_image.append(torch.where(hit.any(1), self.class_down_weight, 1.0))
            weights.append(per_image)
        return weights
