"""Auxiliary groups (OD-DETR Sec. 3.4): from every teacher decoder stage, the two queries of lowest
matching cost per GT become the initial queries and anchors of one independent student group."""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from detr_plus.modeling import QueryGroup, pad_per_image

AG_MATCHINGS = ("md", "original", "rematch")


class TeacherStageGroups(nn.Module):
    """One ``QueryGroup`` per teacher decoder stage t: for each GT, the ``queries_per_gt`` queries with
    the lowest matching cost at stage t (the teacher criterion's matcher cost, so positives and hard
    negatives), whose updated queries and predicted boxes are the group's initial content queries and
    anchors (positions from the anchors the way the student gives its queries positions:
    ``transformer.queries_at``). The student decodes every group in the same pass; groups see only
    themselves. Group sizes vary with the GT count per image (padded).

    ``matching`` (Table 6): "md" (the group's own Hungarian matching plus the teacher's original one,
    ``criterion`` being a ``MatchingDistillation``), "original" (the teacher's assignment of the
    selected queries, fixed), "rematch" (the group's own Hungarian matching only). The teacher's
    original assignment of a selected query is the GT the teacher matched that query to at stage t.
    """

    requires_teacher = True

    def __init__(self, criterion: nn.Module, queries_per_gt: int = 2, matching: str = "md", loss_scale: float = 1.0,
                 stages: Optional[List[int]] = None):
        super().__init__()
        if matching not in AG_MATCHINGS:
            raise ValueError(f"auxiliary group matching={matching!r}: expected one of {AG_MATCHINGS}")
        self.criterion, self.queries_per_gt, self.matching, self.loss_scale = criterion, queries_per_gt, matching, loss_scale
        self.stages = stages

    @torch.no_grad()
    def select(self, layer, matching, targets) -> Tuple[List[torch.Tensor], List[Tuple[torch.Tensor, torch.Tensor]]]:
        """Per image: the selected query indices (GT-major: GT 0's best queries first) and the teacher's
        original pairs (index within the selection, GT)."""
        matcher = self.criterion.matcher
        chosen, gt_of_chosen = [], []
        for b, target in enumerate(targets):
            k = min(self.queries_per_gt, layer.logits.shape[1])
            if len(target["labels"]) == 0:
                chosen.append(torch.empty(0, dtype=torch.long, device=layer.logits.device))
                gt_of_chosen.append(chosen[-1])
                continue
            cost = matcher.cost_matrix(layer.logits[b], layer.boxes[b], target["labels"], target["boxes"])  # (Q, n)
            picked = cost.topk(k, dim=0, largest=False).indices.T.reshape(-1)  # (n * k,)
            chosen.append(picked)
            gt_of_query = torch.full((layer.logits.shape[1],), -1, dtype=torch.long, device=picked.device)
            q, g = matching[b]
            gt_of_query[q] = g
            gt_of_chosen.append(gt_of_query[picked])
        # The pairs' count is data-dependent: one host copy for the whole batch, not one per image.
        host = np.split(torch.cat(gt_of_chosen).cpu().numpy(), np.cumsum([len(c) for c in chosen])[:-1])
        original = []
        for gt, picked in zip(host, chosen):
            entries = np.flatnonzero(gt >= 0)
            original.append(tuple(torch.as_tensor(x, dtype=torch.long).to(picked.device) for x in (entries, gt[entries])))
        return chosen, original

    def forward(self, batch) -> Dict[str, QueryGroup]:
        """``{str(stage): QueryGroup}``, the same stages every step: a batch without objects gives
        groups without queries (their losses are zero), so every step has the same loss keys."""
        teacher = batch.teacher
        stages = range(len(teacher.decoder.layers)) if self.stages is None else self.stages
        groups = {}
        for stage in stages:
            layer = teacher.decoder.layers[stage]
            chosen, original = self.select(layer, teacher.matching[stage], batch.targets)
            content, valid = pad_per_image([layer.hidden[b, q] for b, q in enumerate(chosen)])
            boxes, _ = pad_per_image([layer.boxes[b, q] for b, q in enumerate(chosen)])
            slots, _ = pad_per_image(chosen)
            boxes = torch.where(valid[..., None], boxes, torch.full_like(boxes, 0.5))  # padding: any valid box
            queries = batch.transformer.queries_at(content, boxes, slots)
            queries.valid = valid
            indices = original if self.matching == "original" else None
            extras = {"teacher_indices": original} if self.matching == "md" else {}
            groups[str(stage)] = QueryGroup(queries, self.criterion, indices=indices, loss_scale=self.loss_scale, extras=extras)
        return groups
