"""Prediction distillation (OD-DETR Sec. 3.3, Eq. 5-6): the teacher's initial queries go through the
student decoder, and their outputs learn from the teacher's outputs for the same queries."""
from typing import Dict, Optional

import torch
from torch import nn

from detr_plus.layers.box_ops import box_cxcywh_to_xyxy, paired_box_iou
from detr_plus.modeling import DecoderQueries, QueryGroup, SetCriterion, losses

PD_MODES = ("tood_listen2stu", "tood", "naive", "query_prior")


class TeacherQueriesGroup(nn.Module):
    """The query group of prediction distillation: the EMA teacher's initial content queries with the
    student's positional part and reference points ("we feed the EMA queries Q' together with the
    PE P and image feature F into the student decoder"), one group beside the student's own queries.

    ``mode`` (Table 5): "tood_listen2stu" (TOOD-weight + Listen2stu, the paper's), "tood", "naive"
    (the teacher's plain scores and boxes as targets for every query), or "query_prior" (DETRDistill's
    query-prior assignment distillation: the group learns the GT with ``gt_criterion`` on the pairs
    the teacher's same layer assigned to the same queries, ``TeacherAssignment``, instead of from the
    teacher's predictions)."""

    requires_teacher = True

    def __init__(self, distillation: "PredictionDistillationLoss", gt_criterion: Optional[SetCriterion] = None,
                 mode: str = "tood_listen2stu", loss_scale: float = 1.0):
        super().__init__()
        if mode not in PD_MODES:
            raise ValueError(f"prediction distillation mode={mode!r}: expected one of {PD_MODES}")
        if mode == "query_prior" and gt_criterion is None:
            raise ValueError("mode='query_prior' trains the teacher's queries on the GT: give gt_criterion")
        self.distillation, self.gt_criterion, self.mode, self.loss_scale = distillation, gt_criterion, mode, loss_scale
        self.distillation.set_mode(mode)

    def forward(self, batch) -> Dict[str, QueryGroup]:
        """One group, named after the source (key "")."""
        student = batch.selection.queries
        content = batch.teacher.selection.queries.content
        queries = DecoderQueries(content, student.reference, student.position, student.valid)
        criterion = TeacherAssignment(self.gt_criterion) if self.mode == "query_prior" else self.distillation
        return {"": QueryGroup(queries, criterion, loss_scale=self.loss_scale, extras={"teacher": batch.teacher})}


class TeacherAssignment(nn.Module):
    """A criterion that supervises a group of the teacher's queries on the GT with the pairs the
    teacher's same decoder layer assigned them (DETRDistill's query-prior assignment, OD-DETR Table 5:
    "It feeds the teacher's query into the student's decoder as an extra group to learn GT"), where
    the wrapped criterion would Hungarian-match anew."""

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion

    def forward(self, logits, boxes, targets, num_boxes, indices=None, valid=None, context=None):
        teacher = context.group.extras["teacher"]
        return self.criterion(logits, boxes, targets, num_boxes, teacher.matching[context.layer], valid, context)


class PredictionDistillationLoss(nn.Module):
    """L_pd of Eq. 6 for one decoder layer of the teacher-query group.

    The target of query i is the teacher's score vector c' of the same query and layer; at the class
    c_g of the GT the teacher matched query i to, c'[c_g] <- c'[c_g]^alpha * IoU'^beta (Eq. 5,
    alpha 0.25, beta 0.75; IoU' between the teacher's box and that GT). Classification: QFL (Eq. 2)
    toward this soft target on every query and class. Regression: L1 + GIoU toward the teacher's box
    on the teacher-matched queries, each weighted by c'[c_g] ("TOOD-weight"), and only where the
    teacher's IoU with the GT beats the student's (the same query's box; "Listen2stu"). "naive":
    the unmodified c' as target and every query regressing to the teacher's box with weight 1.
    Sums are divided by the GT count, as every loss here.
    """

    def __init__(self, loss_weights: Optional[Dict[str, float]] = None, alpha=0.25, beta=0.75, gamma=2.0):
        super().__init__()
        self.loss_weights = dict(loss_weights or {"class": 2.0, "bbox": 5.0, "giou": 2.0})
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.tood, self.listen2stu = True, True

    def set_mode(self, mode: str):
        self.tood = mode in ("tood_listen2stu", "tood")
        self.listen2stu = mode == "tood_listen2stu"

    @torch.no_grad()
    def soft_targets(self, teacher_layer, teacher_indices, targets):
        """(B, Q, C) targets (Eq. 5) and the teacher-matched pairs with their TOOD weight and IoU'."""
        scores = teacher_layer.logits.sigmoid()
        target = scores.clone()
        matched = []
        for b, (q, g) in enumerate(teacher_indices):
            labels = targets[b]["labels"][g]
            iou = paired_box_iou(box_cxcywh_to_xyxy(teacher_layer.boxes[b, q].float()),
                                 box_cxcywh_to_xyxy(targets[b]["boxes"][g].float())).to(scores.dtype)
            if self.tood:
                target[b, q, labels] = scores[b, q, labels].pow(self.alpha) * iou.pow(self.beta)
            matched.append((q, g, target[b, q, labels], iou))
        return target, matched

    def forward(self, logits, boxes, targets, num_boxes, indices=None, valid=None, context=None):
        teacher = context.group.extras["teacher"]
        teacher_layer = teacher.decoder.layers[context.layer]
        target, matched = self.soft_targets(teacher_layer, teacher.matching[context.layer], targets)
        class_loss = losses.quality_focal_loss(logits, target, self.gamma)
        if valid is not None:
            class_loss = class_loss * valid[..., None].to(class_loss.dtype)
        l1_terms, giou_terms = [], []
        for b, (q, g, weight, teacher_iou) in enumerate(matched):
            if not self.tood:  # naive: every query toward the teacher's box, evenly
                q = torch.arange(logits.shape[1], device=logits.device)
                weight = torch.ones(len(q), dtype=boxes.dtype, device=boxes.device)
            elif self.listen2stu:
                with torch.no_grad():
                    student_iou = paired_box_iou(box_cxcywh_to_xyxy(boxes[b, q].float()), box_cxcywh_to_xyxy(targets[b]["boxes"][g].float()))
                weight = weight * (teacher_iou > student_iou.to(teacher_iou.dtype)).to(weight.dtype)
            teacher_boxes = teacher_layer.boxes[b, q]
            l1_terms.append(weight * losses.l1_box_loss(boxes[b, q], teacher_boxes).sum(-1))
            giou_terms.append(weight * losses.giou_box_loss(boxes[b, q], teacher_boxes))
        terms = {"class": class_loss.sum(), "bbox": torch.cat(l1_terms).sum(), "giou": torch.cat(giou_terms).sum()}
        return {f"loss_{k}": v / num_boxes * self.loss_weights.get(k, 0.0) for k, v in terms.items()}, teacher.matching[context.layer]
