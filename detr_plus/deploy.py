"""The inference model as one graph for export (ONNX; ``tools/export_onnx.py``).

``InferenceGraph`` runs what ``DeformableDETR.forward`` runs at inference, on one image of any size:
normalisation, the padding to ``size_divisibility`` (masked as Detectron2 masks it), backbone, neck,
encoder, query selection, decoder, the last layer's predictions (Mr. DETR's score fusion included)
and the post-processing of Deformable DETR (the top k of queries x classes, boxes from cxcywh to xyxy
pixels of the image, clipped to it). A method's training-only parts (variants, query groups,
teachers) are not in it: the graph is the baseline's. Per-query heads (the mask head) are not in
it either: the graph is box-only. Layer wrappers that are part of the inference model are: QR-DETR's
routers, with a slot for every query (``gather.static_slots``) so that no shape depends on how many
queries an image routes.

The image size stays free in the exported graph: the tracer records the level shapes as the
feature maps' traced sizes (``level_shapes_tensor`` keeps them when tracing), so the deformable
attention's level splits, views and normalisers follow the input. The graph traced on one size gives
on any other what ``DeformableDETR.forward`` gives there.

The deformable attention runs its ``grid_sample`` implementation in the graph (ONNX ``GridSample``,
opset 16 and later): the default ``bilinear_gather`` uses sparse tensors and an autograd function of
its own, which the exporter cannot trace.
"""
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MultiScaleDeformableAttention
from .modeling.gather import static_slots

EXPORT_ATTENTION = "grid_sample"


@contextmanager
def attention_implementation(model: nn.Module, implementation: str = EXPORT_ATTENTION):
    """Every deformable attention of ``model`` runs ``implementation`` inside the block."""
    modules = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    saved = [m.implementation for m in modules]
    for module in modules:
        module.implementation = implementation
    try:
        yield
    finally:
        for module, value in zip(modules, saved):
            module.implementation = value


class InferenceGraph(nn.Module):
    """``image (3, H, W) float 0-255 in the model's input format, any H and W -> (boxes (K, 4) xyxy in
    the image's pixels, scores (K,), classes (K,) int64)``, K = the model's
    ``select_box_nums_for_evaluation``, sorted by score."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if getattr(model, "eval_nms_threshold", None) is not None:
            raise ValueError(f"model.eval_nms_threshold={model.eval_nms_threshold}: the exported graph has no NMS (Deformable DETR's "
                             "post-processing has none); export with model.eval_nms_threshold=None")
        if getattr(model, "eval_variant", None) is not None:
            raise ValueError(f"model.eval_variant={model.eval_variant!r}: the exported graph is the primary queries' (the baseline's)")
        self.model = model
        self.num_detections = model.select_box_nums_for_evaluation
        self.eval()

    def train(self, mode: bool = True):
        """Always in eval mode: the exporter restores the mode a module had, and a training-mode model
        would run dropout and the training paths."""
        return super().train(False)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with static_slots():  # routed queries (QR-DETR) without a data-dependent count
            return self.detect(image)

    def detect(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        height, width = image.shape[-2], image.shape[-1]  # traced sizes when exporting: the graph keeps them free
        normalised = (image.float() - m.pixel_mean) / m.pixel_std
        divisor = max(m.size_divisibility, 1)  # zero padding after the normalisation, as ImageList.from_tensors pads
        normalised = F.pad(normalised, (0, (divisor - width % divisor) % divisor, 0, (divisor - height % divisor) % divisor))
        rows = torch.arange(normalised.shape[-2], device=image.device)[:, None]
        cols = torch.arange(normalised.shape[-1], device=image.device)[None]
        padding = (rows >= height) | (cols >= width)
        _, features, masks, pos = m.extract_features(SimpleNamespace(tensor=normalised[None]), padding[None])
        state = m.transformer.encode(features, masks, pos)
        selection = m.transformer.select_queries(state)
        final = m.inference_predictions(m.transformer.decode(selection.queries, state))
        num_classes = final.logits.shape[-1]
        scores, flat = final.logits[0].sigmoid().flatten().topk(min(self.num_detections, final.logits.shape[1] * num_classes))
        query, classes = flat // num_classes, flat % num_classes
        cx, cy, bw, bh = final.boxes[0][query].unbind(-1)
        h, w = (~padding[:, 0]).sum().to(scores.dtype), (~padding[0]).sum().to(scores.dtype)  # the image size as traced values
        size = torch.stack([w, h, w, h])
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * size
        boxes = torch.minimum(boxes.clamp(min=0), size)  # Detectron2's Boxes.clip
        return boxes, scores, classes


def match_detections(reference: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor], atol_box: float, atol_score: float) -> Tuple[bool, str]:
    """Do two detection lists agree? Each reference detection must have one of ``other`` of the same
    class with a score within ``atol_score`` and a box within ``atol_box``, used once (the order of two
    detections whose scores differ by less than the tolerance may swap between runtimes)."""
    if len(reference["scores"]) != len(other["scores"]):
        return False, f"{len(reference['scores'])} vs {len(other['scores'])} detections"
    used = torch.zeros(len(other["scores"]), dtype=torch.bool)
    for i in range(len(reference["scores"])):
        close = ((other["classes"] == reference["classes"][i]) & ((other["scores"] - reference["scores"][i]).abs() <= atol_score)
                 & ((other["boxes"] - reference["boxes"][i]).abs().amax(-1) <= atol_box) & ~used)
        if not close.any():
            return False, (f"detection {i} (class {int(reference['classes'][i])}, score {float(reference['scores'][i]):.6f}, "
                           f"box {[round(v, 3) for v in reference['boxes'][i].tolist()]}) has no match")
        used[int(close.nonzero()[0])] = True
    return True, "all matched"
