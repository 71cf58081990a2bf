"""The README's "Add a method" example, complete: a per-query IoU head as a plug-in of the core's
``heads`` slot (no core file touched). Each query predicts the IoU of its box with the object it is
matched to; the loss is the binary cross-entropy against that IoU on the matched pairs, divided by
the number of objects; at inference every detection carries its query's prediction as ``pred_iou``."""
import torch
import torch.nn.functional as F
from torch import nn

from detr_plus.layers import MLP
from detr_plus.modeling import losses


class IoUHead(nn.Module):
    layers = "all"  # every decoder layer's predictions (of the primary queries, variants and groups)
    field = "pred_iou"  # the Instances field at inference

    def __init__(self, d_model: int, weight: float = 1.0):
        super().__init__()
        self.mlp, self.weight = MLP(d_model, d_model, 1, 2), weight

    def forward(self, predictions, state):
        return self.mlp(predictions.hidden).squeeze(-1)  # (B, Q) IoU logits

    def loss(self, outputs, predictions, targets, indices, num_boxes):
        image = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
        query = torch.cat([q for q, _ in indices])
        gt_boxes = torch.cat([t["boxes"][g] for t, (_, g) in zip(targets, indices)])
        iou = losses.matched_iou(predictions.boxes[image, query].detach(), gt_boxes)
        bce = F.binary_cross_entropy_with_logits(outputs[image, query], iou.to(outputs.dtype), reduction="sum")
        return {"loss_iou": self.weight * bce / num_boxes}
