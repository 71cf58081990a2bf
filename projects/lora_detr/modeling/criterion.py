"""A LoRA branch's criterion that adds the layer's one-to-one positives to its one-to-many ones.

In the 900-query recipe of LoRA-DETR's public code each branch's positives also include the o2o
positives (docs/authors_code_facts.md#lora-detr-one-to-many-assignment); the paper does not mention it. The core hands a
route's criterion the primary (one-to-one) pairs of the same decoder layer in
``LossContext.matching["primary"][context.layer]`` (the primary losses are computed first).
"""
from typing import Tuple

import torch
from torch import nn

from detr_plus.modeling import Indices, LossContext, SetCriterion


def union_pairs(pairs: Indices, extra: Indices) -> Tuple[Indices, Indices]:
    """Per image, ``pairs`` plus the pairs of ``extra`` it does not hold (no (query, gt) pair twice),
    sorted by query index (stable: for one query, ``pairs``' GT first) as the matchers return them;
    and, per image, those added pairs of ``extra``."""
    merged, added = [], []
    for (q, g), (eq, eg) in zip(pairs, extra):
        held = ((eq[:, None] == q[None]) & (eg[:, None] == g[None])).any(1)
        eq, eg = eq[~held], eg[~held]
        q_all, g_all = torch.cat([q, eq]), torch.cat([g, eg])
        order = torch.sort(q_all, stable=True).indices
        merged.append((q_all[order], g_all[order]))
        added.append((eq, eg))
    return merged, added


class O2OMergedCriterion(nn.Module):
    """A criterion around a ``SetCriterion`` (its matcher, losses and weights) whose positives are
    the matcher's (one-to-many) pairs united with the layer's one-to-one pairs (no (query, gt) pair
    twice).

    A one-to-one pair the branch's matcher did not make becomes a positive of the branch: its box is
    regressed (L1, GIoU) and its class entry gets the branch's soft target (s = M for LoRA-DETR's
    branches, Eq. 7-8). If such a pair gives a query a second GT, both boxes are regressed; where the
    two GTs share a class, the class entry keeps the one-to-many pair's target (``loss_terms``: the
    first assignment has priority). The one-to-one pairs are added after the matcher's positive cap.
    The returned indices (what ``LossContext.matching[route]`` records) are the merged pairs."""

    def __init__(self, criterion: SetCriterion):
        super().__init__()
        self.criterion = criterion

    @property
    def matcher(self):
        return self.criterion.matcher

    def forward(self, logits, boxes, targets, num_boxes: float, indices=None, valid=None,
                context: LossContext = None) -> Tuple[dict, Indices]:
        if indices is not None:  # given pairs (a caller's own assignment): used as they are
            return self.criterion(logits, boxes, targets, num_boxes, indices, valid, context)
        if context is None or not context.matching or "primary" not in context.matching:
            raise ValueError("O2OMergedCriterion needs LossContext.matching['primary'] (the layer's one-to-one pairs): "
                             "use it as a training route's criterion of DeformableDETR")
        o2m = self.matcher(logits, boxes, targets, valid=valid)
        merged, added = union_pairs(o2m, context.matching["primary"][context.layer])
        return self.criterion.loss_terms(logits, boxes, targets, num_boxes, [o2m, added], merged, valid=valid), merged
