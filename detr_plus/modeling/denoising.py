"""Contrastive denoising (DINO, "DINO: DETR with Improved DeNoising Anchor Boxes for End-to-End Object
Detection", arXiv 2203.03605, Sec. 3.2 and Fig. 3) as a query-group source of the shared core.

Per training step, every GT box gives, in each of G denoising groups, one positive query (its box
noised by less than ``box_noise_scale``, supervised to reconstruct the GT) and one negative query
(noised by between one and two times that, supervised as background). A query's content is the
embedding of its (noised) label and its anchor is the noised box. The groups are packed into one
``QueryGroup`` whose own self-attention mask keeps the groups apart, while ``sees_primary`` lets
them read the matching queries, which never read them (``JointQueries``). Nothing of it runs at
inference, and its one parameter tensor, the label embedding, is under ``group_sources.*``.
"""
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from .contracts import Indices, QueryGroup, TrainingBatch


def denoising_group_count(dn_number: int, largest_gt_count: int) -> int:
    """G = ``dn_number`` // (the batch's largest GT count per image), at least 1: about ``dn_number``
    positive (and as many negative) queries for the image with the most objects (DINO's public
    code, with its default dn_number 100; a batch without objects gets one empty group)."""
    return max(1, dn_number // largest_gt_count) if largest_gt_count > 0 else 1


def noise_labels(labels: torch.Tensor, num_classes: int, label_noise_ratio: float) -> torch.Tensor:
    """Each label replaced by a uniformly random class (possibly the same) with probability
    ``label_noise_ratio / 2``: the public code's reading of the label-noise ratio (0.5 -> 25%)."""
    flip = torch.rand(labels.shape, device=labels.device) < label_noise_ratio * 0.5
    return torch.where(flip, torch.randint_like(labels, 0, num_classes), labels)


def noise_boxes(boxes: torch.Tensor, negative: torch.Tensor, box_noise_scale: float) -> torch.Tensor:
    """Boxes (..., 4) cxcywh with each corner coordinate moved by ``s * u * lambda * (w/2 or h/2)``,
    s a random sign, u uniform in [0, 1) for positives and [1, 2) for negatives (``negative`` (...)
    bool), lambda = ``box_noise_scale`` (DINO Sec. 3.2: positives inside lambda_1, negatives between
    lambda_1 and lambda_2 = 2 lambda_1); the corners are clamped to the image."""
    if box_noise_scale <= 0:
        return boxes.clone()
    corners = box_cxcywh_to_xyxy(boxes)
    half_size = torch.cat([boxes[..., 2:], boxes[..., 2:]], -1) / 2  # (w, h, w, h) / 2 for (x0, y0, x1, y1)
    magnitude = torch.rand(boxes.shape, device=boxes.device) + negative[..., None].to(boxes.dtype)
    sign = torch.randint(0, 2, boxes.shape, device=boxes.device, dtype=boxes.dtype) * 2 - 1
    corners = (corners + sign * magnitude * half_size * box_noise_scale).clamp(0.0, 1.0)
    return box_xyxy_to_cxcywh(corners)


class ContrastiveDenoising(nn.Module):
    """``model.group_sources["dn"]``: DINO's contrastive denoising queries (a ``GroupSource``).

    Layout of the N = G x 2 x n_max queries (n_max the batch's largest GT count): group g holds the
    positives of GT 0..n_max-1 then their negatives; an image's rows past its own GT count are
    padding: zero content at the box (0.5, 0.5, 0.5, 0.5). ``attend_padding`` (DINO's public code):
    padding rows are queries like the others, seen by their group and supervised as background;
    off: they are masked (never attended to, matched or supervised). ``indices`` fixes every positive to its GT in
    every decoder layer; the negatives are unmatched, so the class loss pushes them to background.
    The group's losses are scaled by ``loss_scale`` / G: normalised by num_boxes x G as in the
    public code. ``criterion``: the class / L1 / GIoU set loss (its matcher is never called).
    """

    def __init__(self, criterion: nn.Module, num_classes: int, d_model: int, dn_number: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 0.4, loss_scale: float = 1.0,
                 attend_padding: bool = True):
        super().__init__()
        if dn_number < 1:
            raise ValueError(f"ContrastiveDenoising: dn_number={dn_number} must be at least 1")
        self.criterion, self.num_classes, self.dn_number = criterion, num_classes, dn_number
        self.label_noise_ratio, self.box_noise_scale, self.loss_scale = label_noise_ratio, box_noise_scale, loss_scale
        self.attend_padding = attend_padding
        self.label_embedding = nn.Embedding(num_classes, d_model)

    def extra_repr(self):
        return (f"dn_number={self.dn_number}, label_noise_ratio={self.label_noise_ratio}, "
                f"box_noise_scale={self.box_noise_scale}")

    def noised_targets(self, targets) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(labels (B, N), boxes (B, N, 4), valid (B, N), G) in the layout above."""
        counts = [len(t["labels"]) for t in targets]
        n_max, device = max(counts, default=0), targets[0]["boxes"].device
        groups = denoising_group_count(self.dn_number, n_max)
        labels = torch.zeros(len(targets), groups, 2, n_max, dtype=torch.long, device=device)
        boxes = torch.full((len(targets), groups, 2, n_max, 4), 0.5, device=device)
        valid = torch.zeros(len(targets), groups, 2, n_max, dtype=torch.bool, device=device)
        negative = torch.tensor([False, True], device=device)[None, :, None].expand(groups, 2, n_max)
        for b, (target, n) in enumerate(zip(targets, counts)):
            if n == 0:
                continue
            copies = (groups, 2, n)
            labels[b, ..., :n] = noise_labels(target["labels"].expand(copies), self.num_classes, self.label_noise_ratio)
            boxes[b, ..., :n, :] = noise_boxes(target["boxes"].expand(*copies, 4), negative[..., :n], self.box_noise_scale)
            valid[b, ..., :n] = True
        size = groups * 2 * n_max
        batch = len(targets)
        return labels.view(batch, size), boxes.view(batch, size, 4), valid.view(batch, size), groups

    @staticmethod
    def positive_indices(counts: List[int], groups: int, device) -> Indices:
        """Per image (query, GT): GT i's positive in group g is query g x 2 n_max + i."""
        n_max = max(counts, default=0)
        indices = []
        for n in counts:
            starts = torch.arange(groups, device=device) * 2 * n_max
            query = (starts[:, None] + torch.arange(n, device=device)[None]).reshape(-1)
            indices.append((query, torch.arange(n, device=device).repeat(groups)))
        return indices

    @staticmethod
    def separate_groups_mask(groups: int, size: int, device) -> torch.Tensor:
        """(N, N) bool, True where a denoising query may not attend another: different groups."""
        per_group = size // groups if groups else 0
        group_of = torch.arange(size, device=device) // max(per_group, 1)
        return group_of[:, None] != group_of[None, :]

    def forward(self, batch: TrainingBatch) -> Dict[str, QueryGroup]:
        labels, boxes, valid, groups = self.noised_targets(batch.targets)
        content = self.label_embedding(labels) * valid[..., None].to(self.label_embedding.weight.dtype)
        queries = batch.transformer.queries_at(content, boxes)
        queries.valid = None if self.attend_padding else valid
        counts = [len(t["labels"]) for t in batch.targets]
        group = QueryGroup(queries, self.criterion, indices=self.positive_indices(counts, groups, labels.device),
                           sees_primary=True, loss_scale=self.loss_scale / groups,
                           self_attn_mask=self.separate_groups_mask(groups, labels.shape[1], labels.device))
        return {"": group}
