"""Query-to-GT matchers: one-to-one Hungarian and one-to-many (LoRA-DETR Eq. 7 / Mr. DETR).

Call signature shared by both matchers:
    matcher(pred_logits (B, Q, C), pred_boxes (B, Q, 4) normalised cxcywh, targets, valid=None)
    targets: list of B dicts with "labels" LongTensor (n,) and "boxes" (n, 4) normalised cxcywh.
    valid: optional (B, Q) bool, False on padded queries, which are never matched.
    returns: list of B tuples (query_idx LongTensor, gt_idx LongTensor) on the inputs' device,
             sorted by query_idx (ascending).
"""
import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou, generalized_box_iou

from ..layers.box_ops import box_cxcywh_to_xyxy, paired_giou_loss

__all__ = ["HungarianMatcher", "OneToManyMatcher", "matching_quality"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def _empty_pair(device) -> Tuple[torch.Tensor, torch.Tensor]:
    e = torch.empty(0, dtype=torch.long, device=device)
    return e, e.clone()


class HungarianMatcher:
    """One-to-one bipartite matching (DETR / Deformable-DETR).

    cost = cost_class * C_focal + cost_bbox * L1(b, b_gt) + cost_giou * (-GIoU(b, b_gt)), with the
    focal class cost of Deformable-DETR:
      C_focal[q, j] = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p)),
      p = sigmoid(logit[q, label_j]).
    The costs of the whole batch are built in one call on the inputs' device (queries x every GT of
    the batch) and copied to the host once; then each image's block is solved by
    scipy.optimize.linear_sum_assignment (float32). scipy returns pairs sorted by query index; we
    keep that order. Images with zero GTs (or zero queries) give empty indices; padded queries
    (``valid`` False) are left out of the assignment.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def class_cost(self, x: torch.Tensor) -> torch.Tensor:
        """The focal class cost of logits ``x`` at the GT class (elementwise)."""
        x = x.float()
        p = x.sigmoid()
        a, g = self.focal_alpha, self.focal_gamma
        pos = a * (1 - p).pow(g) * (-F.logsigmoid(x))   # -log p
        neg = (1 - a) * p.pow(g) * (-F.logsigmoid(-x))  # -log(1 - p)
        return pos - neg

    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, gt_labels: torch.Tensor,
                    gt_boxes: torch.Tensor) -> torch.Tensor:
        """(..., Q, C), (..., Q, 4), (n,), (n, 4) -> (..., Q, n) matching cost (one image, or a batch
        against the GTs of every image)."""
        boxes, gt_boxes = boxes.float(), gt_boxes.float()
        c_l1 = torch.cdist(boxes, gt_boxes.expand(*boxes.shape[:-2], *gt_boxes.shape), p=1)
        c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes.reshape(-1, 4)), box_cxcywh_to_xyxy(gt_boxes))
        c_giou = c_giou.view(*boxes.shape[:-1], len(gt_boxes))
        return self.cost_class * self.class_cost(logits[..., gt_labels]) + self.cost_bbox * c_l1 + self.cost_giou * c_giou

    @torch.no_grad()
    def pair_costs(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor, targets: List[Dict[str, torch.Tensor]],
                   indices: Indices) -> List[torch.Tensor]:
        """The matching cost of each given (query, GT) pair, per image (e.g. to rank two queries that
        ended up with the same GT, OD-DETR Eq. 4)."""
        costs = []
        for b, (q, g) in enumerate(indices):
            labels, gt = targets[b]["labels"][g], targets[b]["boxes"][g].float()
            boxes = pred_boxes[b, q].float()
            c_class = self.class_cost(pred_logits[b, q, labels])
            c_l1 = (boxes - gt).abs().sum(-1)
            c_giou = paired_giou_loss(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt)) - 1
            costs.append(self.cost_class * c_class + self.cost_bbox * c_l1 + self.cost_giou * c_giou)
        return costs

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                 targets: List[Dict[str, torch.Tensor]], valid: Optional[torch.Tensor] = None) -> Indices:
        device = pred_logits.device
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0 or pred_logits.shape[1] == 0:
            return [_empty_pair(device) for _ in targets]
        labels = torch.cat([t["labels"] for t in targets])
        gt_boxes = torch.cat([t["boxes"] for t in targets])
        cost = self.cost_matrix(pred_logits, pred_boxes, labels, gt_boxes)
        cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
        if valid is not None:  # one host copy for both: (B, Q, sum n + 1), the last column the validity
            cost = torch.cat([cost, valid[..., None].to(cost.dtype)], -1)
        cost = cost.cpu().numpy()  # the one host copy
        if valid is not None:
            cost, valid = cost[..., :-1], cost[..., -1] > 0
        rows, cols, counts, start = [], [], [], 0
        for b, n in enumerate(sizes):
            block = cost[b, :, start : start + n]
            start += n
            candidates = np.arange(block.shape[0]) if valid is None else np.flatnonzero(valid[b])
            if n == 0 or len(candidates) == 0:
                counts.append(0)
                continue
            r, c = linear_sum_assignment(block[candidates])
            rows.append(candidates[r])
            cols.append(c)
            counts.append(len(r))
        if not rows:
            return [_empty_pair(device) for _ in targets]
        pairs = torch.as_tensor(np.stack([np.concatenate(rows), np.concatenate(cols)]), dtype=torch.long).to(device)
        return [(p[0], p[1]) for p in pairs.split(counts, dim=1)]


@torch.no_grad()
def matching_quality(pred_logits_b: torch.Tensor, pred_boxes_b: torch.Tensor,
                     gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                     class_weight: float = 0.3) -> torch.Tensor:
    """Matching score M of LoRA-DETR Eq. 7 for one image (no autograd):

      M[q, j] = class_weight * sigmoid(logit[q, label_j]) + (1 - class_weight) * IoU(b_q, b_j)

    (the authors' code: IoU weight 0.7, class weight 0.3). Boxes are normalised cxcywh.
    (Q, C), (Q, 4), (n,), (n, 4) -> (Q, n) float32. Also the VFL+ soft target s of o2m branches.
    """
    cls = pred_logits_b[:, gt_labels].float().sigmoid()
    iou = box_iou(box_cxcywh_to_xyxy(pred_boxes_b.float()), box_cxcywh_to_xyxy(gt_boxes.float()))
    return class_weight * cls + (1 - class_weight) * iou


class OneToManyMatcher:
    """One-to-many assignment on the matching score M (LoRA-DETR Eq. 7; Mr. DETR's rules).

    Per image, with M = matching_quality(...) of shape (Q, n); each query gets at most ONE GT:
      1. Top-1 (if keep_top1): every GT j reserves its top-1 query argmax_q M[q, j] (ties: lower
         query index), even below the threshold. A query that is the top-1 of several GTs goes
         to the lowest GT index. These rule-1 pairs override rules 2-3 (a reserved query is not
         a candidate of any other GT).
      2. Candidates: every other query takes its best GT argmax_j M[q, j] (ties: lower GT
         index) and is a candidate iff that best M >= threshold.
      3. Per GT at most `topk` positives in total, the top-1 pair counted: a GT keeps its
         highest-M candidates (ties: lower query index) up to topk - (1 if it holds a top-1
         pair else 0).
      4. Cap: at most max(floor(max_positive_ratio * Q), #top-1 pairs) positives per image;
         top-1 pairs are kept first, then the rest by M descending (ties: lower query index).
    Hence every positive that is not a top-1 pair has M >= threshold. Returns, per image,
    (query_idx, gt_idx) sorted by query_idx on the inputs' device; zero GTs / queries -> empty.

    Mr. DETR's public code (docs/authors_code_facts.md#mr-detr-one-to-many-matcher), with ``selection="dynamic_k"`` and
    ``max_positives``:
      2'. a GT's candidate count c_j is the number of queries whose best GT is j with M >= threshold;
      3'. GT j takes its top-min(c_j, topk) queries by M[:, j] among ALL queries (candidates of
          other GTs too; the top-1 of rule 1 is its first); a query taken by several GTs keeps the
          one with the highest M (ties: lower GT index), a rule-1 query its rule-1 GT;
      4'. ``max_positives`` (a constant, 225 = 0.25 x 900 there) replaces rule 4: when an image has
          more positives, a uniformly random subset of that size is kept, drawn from a generator
          seeded with ``seed`` (reproducible runs from the same start).
    """

    SELECTIONS = ("candidates", "dynamic_k")

    def __init__(self, topk: int = 6, threshold: float = 0.4, class_weight: float = 0.3,
                 max_positive_ratio: float = 0.25, keep_top1: bool = True, selection: str = "candidates",
                 max_positives: Optional[int] = None, seed: int = 0):
        if selection not in self.SELECTIONS:
            raise ValueError(f"OneToManyMatcher.selection={selection!r}: expected one of {self.SELECTIONS}")
        self.topk = topk
        self.threshold = threshold
        self.class_weight = class_weight
        self.max_positive_ratio = max_positive_ratio
        self.keep_top1 = keep_top1
        self.selection, self.max_positives = selection, max_positives
        self.generator = torch.Generator().manual_seed(seed)

    def assign(self, quality: torch.Tensor, valid: Optional[torch.Tensor] = None):
        """Rules 1-4 (or 1, 2'-3') on the device without a host sync: for a (Q, n) matching-score
        matrix, every query's GT (-1: none), whether it is a rule-1 pair, and its M. Rule 4' (a
        random subset) is applied on the host (:meth:`host_pairs`). ``valid`` (Q,) bool: padded
        queries (False) take part in nothing; rule 4's Q counts the valid ones."""
        nq, n = quality.shape
        device = quality.device
        if valid is not None:
            quality = quality.masked_fill(~valid[:, None], -math.inf)
        query = torch.arange(nq, device=device)
        # Rule 1: top-1 query of every GT; a query claimed twice goes to the lower GT index.
        owner = torch.full((nq,), n, dtype=torch.long, device=device)
        if self.keep_top1:
            owner.scatter_reduce_(0, quality.argmax(dim=0), torch.arange(n, device=device), reduce="amin")
        is_top1 = owner < n
        if valid is not None:
            is_top1 &= valid
        best_m, best_gt = quality.max(dim=1)
        if self.selection == "dynamic_k":
            # 2'. c_j = #queries whose best GT is j with M >= threshold; 3'. GT j takes its top
            # min(c_j, topk) queries by M[:, j] (ties: lower query index); a query keeps the taken GT of highest M.
            counts = torch.zeros(n, dtype=torch.long, device=device).scatter_add_(0, best_gt, (best_m >= self.threshold).long())
            taken = self._column_rank(quality) < counts.clamp(max=self.topk)[None]
            cand_m, cand_gt = quality.masked_fill(~taken, -math.inf).max(dim=1)
            keep = taken.any(dim=1) & ~is_top1
        else:
            # 2. the other queries are candidates of their best GT when its M >= threshold; 3. a GT
            # keeps its best candidates (ties: lower query index) up to topk - (1 if it has a top-1 pair).
            cand_m, cand_gt = best_m, best_gt
            candidate = ~is_top1 & (best_m >= self.threshold)
            has_top1 = torch.zeros(n + 1, dtype=torch.long, device=device).scatter_(0, owner, 1)[:n]
            of_gt = candidate[:, None] & (best_gt[:, None] == torch.arange(n, device=device))
            rank = self._column_rank(quality.masked_fill(~of_gt, -math.inf)).gather(1, best_gt[:, None])[:, 0]
            keep = candidate & (rank < self.topk - has_top1[best_gt])
        if self.max_positives is None:  # 4. cap: top-1 pairs first, then by M descending (ties: lower query index)
            valid_queries = float(nq) if valid is None else valid.sum().double()
            room = (torch.floor(torch.as_tensor(valid_queries, dtype=torch.float64, device=device) * self.max_positive_ratio)
                    - is_top1.sum()).clamp(min=0)
            order = torch.sort(cand_m.masked_fill(~keep, -math.inf), descending=True, stable=True).indices
            keep &= torch.empty_like(order).scatter_(0, order, query) < room
        gt = torch.where(is_top1, owner, torch.where(keep, cand_gt, -1))
        return gt, is_top1, torch.where(is_top1 | keep, cand_m, 0.0)

    @staticmethod
    def _column_rank(scores: torch.Tensor) -> torch.Tensor:
        """(Q, n) -> every entry's rank in its column by descending score, ties to the lower row."""
        order = torch.sort(scores, dim=0, descending=True, stable=True).indices
        rows = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(order)
        return torch.empty_like(order).scatter_(0, order, rows)

    def host_pairs(self, gt: np.ndarray, is_top1: np.ndarray, m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One image's (query_idx, gt_idx), by query, from :meth:`assign`'s outputs on the host, with
        rule 4': a uniformly random subset of ``max_positives`` pairs, drawn as a permutation of the
        pairs listed top-1 pairs first (by query), then the others (by query for "dynamic_k"; by
        GT, M descending, query for "candidates")."""
        queries = np.flatnonzero(gt >= 0)
        if self.max_positives is None or len(queries) <= self.max_positives:
            return queries, gt[queries]
        top1, others = queries[is_top1[queries]], queries[~is_top1[queries]]
        if self.selection == "candidates":
            others = others[np.lexsort((others, -m[others], gt[others]))]
        listed = np.concatenate([top1, others])
        chosen = np.sort(listed[torch.randperm(len(listed), generator=self.generator)[: self.max_positives].numpy()])
        return chosen, gt[chosen]

    def match_single(self, quality: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Assign from a (Q, n) matching-score matrix; returns (query_idx, gt_idx)."""
        if quality.shape[0] == 0 or quality.shape[1] == 0:
            return _empty_pair(quality.device)
        gt, is_top1, m = (t.cpu().numpy() for t in self.assign(quality))
        return tuple(torch.as_tensor(x, dtype=torch.long, device=quality.device) for x in self.host_pairs(gt, is_top1, m))

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                 targets: List[Dict[str, torch.Tensor]], valid: Optional[torch.Tensor] = None) -> Indices:
        """Every image assigned on the device, then ONE copy of the (B, 3, Q) assignments to the host
        (the number of pairs is data-dependent) and one copy of the pairs back."""
        device, num_queries = pred_logits.device, pred_logits.shape[1]
        assigned = []
        for b, tgt in enumerate(targets):
            if len(tgt["labels"]) == 0 or num_queries == 0:
                assigned.append(torch.full((3, num_queries), -1.0, dtype=torch.float64, device=device))
                continue
            quality = matching_quality(pred_logits[b], pred_boxes[b], tgt["labels"], tgt["boxes"], self.class_weight)
            gt, is_top1, m = self.assign(quality, None if valid is None else valid[b])
            assigned.append(torch.stack([gt.double(), is_top1.double(), m.double()]))
        if not assigned:
            return []
        host = torch.stack(assigned).cpu().numpy()  # the one host copy
        pairs = [self.host_pairs(h[0].astype(np.int64), h[1] > 0, h[2]) for h in host]
        flat = torch.as_tensor(np.concatenate([np.stack(p) for p in pairs], axis=1), dtype=torch.long)
        return [(p[0], p[1]) for p in flat.to(device).split([len(q) for q, _ in pairs], dim=1)]
