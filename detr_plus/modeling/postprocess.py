"""Inference post-processing: the top (query, class) pairs of the last layer as Detectron2 ``Instances``."""
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.modeling import detector_postprocess
from detectron2.structures import Boxes, Instances
from torchvision.ops import batched_nms

from ..layers.box_ops import box_cxcywh_to_xyxy


def top_detections(logits: torch.Tensor, boxes: torch.Tensor, image_sizes, batched_inputs: List[Dict], num_select: int,
                   nms_threshold: Optional[float] = None, pre_nms_topk: int = 1000,
                   per_query: Optional[Dict[str, torch.Tensor]] = None, finishers: Sequence[Callable] = (),
                   padded_size=None) -> List[Dict[str, Instances]]:
    """Top-k over queries x classes (Deformable DETR's post-processing), boxes back to the input
    size; k = ``num_select`` (after class-wise NMS at ``nms_threshold`` over the top
    ``pre_nms_topk`` pairs, when given). ``per_query``: (B, Q, ...) outputs of heads, or callables
    ``(image, queries) -> (N, ...)`` that compute them for the kept queries only, set as the
    ``Instances`` field of their name. ``finishers``: heads' ``finish(instances,
    image_size, padded_size)``, called on each image's kept detections at the original size (a mask
    head turns its logits into masks there)."""
    num_classes = logits.shape[-1]
    nms = nms_threshold is not None
    k = min(max(pre_nms_topk, num_select) if nms else num_select, logits.shape[1] * num_classes)
    scores, flat = logits.sigmoid().flatten(1).topk(k, dim=1)
    query, labels = flat // num_classes, flat % num_classes
    boxes = box_cxcywh_to_xyxy(boxes.gather(1, query[..., None].expand(-1, -1, 4)))
    results = []
    for i, (h, w) in enumerate(image_sizes):
        instances = Instances((h, w))
        instances.pred_boxes = Boxes(boxes[i] * torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device))
        instances.pred_boxes.clip((h, w))
        instances.scores = scores[i]
        instances.pred_classes = labels[i]
        for field, values in (per_query or {}).items():
            instances.set(field, of_kept_queries(values, i, query[i]))
        x = batched_inputs[i]
        instances = detector_postprocess(instances, x.get("height", h), x.get("width", w))
        if nms:
            keep = batched_nms(instances.pred_boxes.tensor, instances.scores, instances.pred_classes, nms_threshold)
            instances = instances[keep[:num_select]]
        for finish in finishers:
            instances = finish(instances, (h, w), padded_size)
        results.append({"instances": instances})
    return results


def of_kept_queries(values, image: int, query: torch.Tensor) -> torch.Tensor:
    """A head's outputs for the queries ``query`` (with repeats: a query kept for two classes) of image
    ``image``: rows of a (B, Q, ...) tensor, or computed once per distinct query by a callable."""
    if not callable(values):
        return values[image][query]
    distinct, inverse = query.unique(return_inverse=True)
    return values(torch.full_like(distinct, image), distinct)[inverse]
