"""Small box helpers that torchvision.ops does not provide directly.

Everything else (box_iou, generalized_box_iou, box_convert, sigmoid_focal_loss) should be taken
from ``torchvision.ops``. The paired GIoU loss is here because torchvision's
``generalized_box_iou_loss`` computes the intersection with boolean-mask indexing: on a GPU every
call waits for the device (four times), and the loss is called for every decoder layer.
"""
import torch
from torchvision.ops import box_convert

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "inverse_sigmoid", "paired_box_iou", "paired_giou_loss"]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes from (cx, cy, w, h) to (x0, y0, x1, y1)."""
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes from (x0, y0, x1, y1) to (cx, cy, w, h)."""
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms clamped to >= eps."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def paired_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise IoU of N box pairs, both (N, 4) in xyxy format -> (N,).

    Computed directly (O(N)) rather than via the diagonal of the (N, N) ``box_iou``.
    Degenerate pairs (zero union) give IoU 0.
    """
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    union = area1 + area2 - inter
    return inter / union.clamp(min=eps)


def paired_giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - GIoU (Rezatofighi et al. 2019, Alg. 1) of box pairs, both (..., 4) xyxy -> (...): the
    values and gradients of ``torchvision.ops.generalized_box_iou_loss(reduction="none")`` (same eps),
    with the intersection's width and height clamped at 0 instead of masked (no host sync)."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    inter = (torch.minimum(x2, x2g) - torch.maximum(x1, x1g)).clamp(min=0) * (torch.minimum(y2, y2g) - torch.maximum(y1, y1g)).clamp(min=0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    enclosing = (torch.maximum(x2, x2g) - torch.minimum(x1, x1g)) * (torch.maximum(y2, y2g) - torch.minimum(y1, y1g))
    return 1 - (iou - (enclosing - union) / (enclosing + eps))
