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
from torchvision.ops import box_iou, generalized_box_iou, generalized_box_iou_loss

from ..layers.box_ops import box_cxcywh_to_xyxy

__all__ = ["HungarianMatcher", "OneToManyMatcher", "matching_quality"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def _empty_pair(device) -> Tuple[torch.Tensor, torch.Tensor]:
    e = torch.empty(0, dtype=torch.long, device=device)
    return e, e.clone()


def _valid_rows(valid: Optional[torch.Tensor], b: int) -> Optional[torch.Tensor]:
    """Indices of image b's unpadded queries, or None when nothing is padded."""
    return None if valid is None else valid[b].nonzero().flatten()


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
            c_giou = generalized_box_iou_loss(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt), reduction="none") - 1
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
        cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8).cpu().numpy()  # the one host copy
        valid = None if valid is None else valid.cpu().numpy()
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

    def dynamic_k_pairs(self, quality: torch.Tensor, is_top1: torch.Tensor, owner: torch.Tensor):
        """Rules 2'-3': the (query, GT, M) pairs besides the rule-1 ones."""
        nq, n = quality.shape
        best_m, best_gt = quality.max(dim=1)
        candidates = torch.bincount(best_gt[best_m >= self.threshold], minlength=n)
        k = candidates.clamp(max=self.topk)
        order = torch.sort(quality, dim=0, descending=True, stable=True).indices  # ties: lower query index
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(nq, device=quality.device)[:, None].expand(nq, n))
        taken = rank < k[None]
        taken_m, taken_gt = quality.masked_fill(~taken, -math.inf).max(dim=1)
        keep = taken.any(dim=1) & ~is_top1
        queries = torch.arange(nq, device=quality.device)[keep]
        return queries, taken_gt[keep], taken_m[keep]

    def match_single(self, quality: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Assign from a (Q, n) matching-score matrix; returns (query_idx, gt_idx)."""
        nq, n = quality.shape
        device = quality.device
        if nq == 0 or n == 0:
            return _empty_pair(device)
        arange_q = torch.arange(nq, device=device)
        # Rule 1: top-1 query of every GT; a query claimed twice goes to the lower GT index.
        owner = torch.full((nq,), n, dtype=torch.long, device=device)
        if self.keep_top1:
            top1 = quality.argmax(dim=0)
            owner.scatter_reduce_(0, top1, torch.arange(n, device=device), reduce="amin")
        is_top1 = owner < n
        has_top1 = torch.zeros(n, dtype=torch.long, device=device)
        has_top1[owner[is_top1]] = 1
        if self.selection == "dynamic_k":
            cq, cg, cm = self.dynamic_k_pairs(quality, is_top1, owner)
        else:
            # Rule 2: remaining queries are candidates of their best GT if best M >= threshold.
            best_m, best_gt = quality.max(dim=1)
            cand = (~is_top1) & (best_m >= self.threshold)
            cq, cg, cm = arange_q[cand], best_gt[cand], best_m[cand]
            # Rule 3: rank candidates within their GT by M (desc), keep topk - has_top1 of them.
            order = torch.sort(cm, descending=True, stable=True).indices
            order = order[torch.sort(cg[order], stable=True).indices]
            cq, cg, cm = cq[order], cg[order], cm[order]
            counts = torch.bincount(cg, minlength=n)
            group_start = torch.cumsum(counts, 0) - counts
            rank = torch.arange(len(cg), device=device) - group_start[cg]
            keep = rank < (self.topk - has_top1[cg])
            cq, cg, cm = cq[keep], cg[keep], cm[keep]
        tq = arange_q[is_top1]
        tg = owner[is_top1]
        q_all = torch.cat([tq, cq])
        g_all = torch.cat([tg, cg])
        if self.max_positives is not None:  # Rule 4': a random subset of fixed size
            if len(q_all) > self.max_positives:
                keep = torch.randperm(len(q_all), generator=self.generator)[: self.max_positives].to(device)
                q_all, g_all = q_all[keep], g_all[keep]
            order = torch.argsort(q_all)
            return q_all[order], g_all[order]
        # Rule 4: cap, top-1 pairs first, then by M descending.
        cap = max(int(self.max_positive_ratio * nq), len(tq))
        if len(q_all) > cap:
            o = torch.argsort(cq)  # query order first, so M ties go to the lower query index
            cq, cg, cm = cq[o], cg[o], cm[o]
            o = torch.sort(cm, descending=True, stable=True).indices
            cq, cg = cq[o], cg[o]
            q_all = torch.cat([tq, cq])[:cap]
            g_all = torch.cat([tg, cg])[:cap]
        order = torch.argsort(q_all)
        return q_all[order], g_all[order]

    @torch.no_grad()
    def __call__(self, pred_logits: torch.Tensor, pred_boxes: torch.Tensor,
                 targets: List[Dict[str, torch.Tensor]], valid: Optional[torch.Tensor] = None) -> Indices:
        out = []
        for b, tgt in enumerate(targets):
            rows = _valid_rows(valid, b)
            logits, boxes = (pred_logits[b], pred_boxes[b]) if rows is None else (pred_logits[b, rows], pred_boxes[b, rows])
            if len(tgt["labels"]) == 0 or logits.shape[0] == 0:
                out.append(_empty_pair(pred_logits.device))
                continue
            q, g = self.match_single(matching_quality(logits, boxes, tgt["labels"], tgt["boxes"], self.class_weight))
            out.append((q, g) if rows is None else (rows[q], g))
        return out
