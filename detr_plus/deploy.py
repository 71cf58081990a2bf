"""The inference model as one graph for export (ONNX; ``tools/export_onnx.py``).

``InferenceGraph`` runs what ``DeformableDETR.forward`` runs at inference, on one image on a canvas
of fixed size: normalisation, backbone, neck, encoder, query selection, decoder, the last layer's
predictions (Mr. DETR's score fusion included) and the post-processing of Deformable DETR (the top k
of queries x classes, boxes from cxcywh to xyxy pixels of the image, clipped to it). A method's
training-only parts (variants, query groups, teachers) are not in it: the graph is the baseline's.

The canvas is fixed when the graph is exported (the level shapes of the deformable attention are
constants of the traced graph); any image up to that size is run by padding it to the canvas and
passing its size as the second input, which masks the padding as the batch padding of Detectron2 is
masked. An image whose padded size (to ``size_divisibility``) equals the canvas gives exactly what
``DeformableDETR.forward`` gives.

The deformable attention runs its ``grid_sample`` implementation in the graph (ONNX ``GridSample``,
opset 16 and later): the default ``bilinear_gather`` uses sparse tensors and an autograd function of
its own, which the exporter cannot trace.
"""
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Dict, Tuple

import torch
from torch import nn

from .layers import MultiScaleDeformableAttention

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
    """``(image (3, H, W) float 0-255 in the model's input format, image_size (2,) int64 = valid
    (h, w)) -> (boxes (K, 4) xyxy in the image's pixels, scores (K,), classes (K,) int64)``,
    K = the model's ``select_box_nums_for_evaluation``, sorted by score."""

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

    def forward(self, image: torch.Tensor, image_size: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        height, width = image.shape[-2], image.shape[-1]
        h, w = image_size[0], image_size[1]
        rows = torch.arange(height, device=image.device)[:, None]
        cols = torch.arange(width, device=image.device)[None]
        padding = (rows >= h) | (cols >= w)
        normalised = ((image.float() - m.pixel_mean) / m.pixel_std).masked_fill(padding, 0.0)
        _, features, masks, pos = m.extract_features(SimpleNamespace(tensor=normalised[None]), padding[None])
        state = m.transformer.encode(features, masks, pos)
        selection = m.transformer.select_queries(state)
        final = m.inference_predictions(m.transformer.decode(selection.queries, state))
        num_classes = final.logits.shape[-1]
        scores, flat = final.logits[0].sigmoid().flatten().topk(min(self.num_detections, final.logits.shape[1] * num_classes))
        query, classes = flat // num_classes, flat % num_classes
        cx, cy, bw, bh = final.boxes[0][query].unbind(-1)
        size = torch.stack([w, h, w, h]).to(scores.dtype)
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1) * size
        boxes = torch.minimum(boxes.clamp(min=0), size)  # Detectron2's Boxes.clip
        return boxes, scores, classes


def pad_to_canvas(image: torch.Tensor, canvas: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the image (3, h, w) at the top left of a zero canvas (3, H, W), its size (h, w) as int64);
    a ``ValueError`` when it does not fit."""
    h, w = image.shape[-2:]
    if h > canvas[0] or w > canvas[1]:
        raise ValueError(f"image of {h}x{w} does not fit the exported canvas {canvas[0]}x{canvas[1]}: export with a larger --canvas")
    padded = image.new_zeros(image.shape[0], *canvas)
    padded[:, :h, :w] = image
    return padded, torch.tensor([h, w], dtype=torch.int64)


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
