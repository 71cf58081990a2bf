"""Mr. DETR's evaluation detail (the authors' public code, docs/authors_code_facts.md#mr-detr-inference-and-published-numbers):
class scores fused over the decoder layers before the top-300 selection; not part of the method."""
from typing import List

import torch
from torch import nn

from detr_plus.layers.box_ops import inverse_sigmoid


class LayerScoreFusion(nn.Module):
    """The authors' running fusion of the primary queries' per-layer class probabilities: the first
    layer's p_0, then f_l = sqrt((p_l ** a + f_{l-1} ** b) / 2) with a = 2.001, b = 1.853, each f_l
    kept as a logit clamped at ``eps`` (their ``inverse_sigmoid``), so the last layer weighs about
    half, the one before a quarter, and so on. Returns the fused logits (B, Q, C); the boxes stay
    the last layer's. No parameters: the model costs what it costs without it."""

    def __init__(self, current_exponent: float = 2.001, previous_exponent: float = 1.853, eps: float = 1e-3):
        super().__init__()
        self.current_exponent, self.previous_exponent, self.eps = current_exponent, previous_exponent, eps

    def forward(self, layer_logits: List[torch.Tensor]) -> torch.Tensor:
        fused = layer_logits[0]
        for logits in layer_logits[1:]:
            previous = fused.sigmoid()
            fused = inverse_sigmoid(((logits.sigmoid() ** self.current_exponent + previous ** self.previous_exponent) / 2).sqrt(), self.eps)
        return fused
