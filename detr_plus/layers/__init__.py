from .mlp import MLP
from .ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn_bilinear_gather, ms_deform_attn_grid_sample, ms_deform_attn_naive
from .position_encoding import PositionEmbeddingSine, box_sine_embedding

__all__ = [
    "MLP",
    "MultiScaleDeformableAttention",
    "PositionEmbeddingSine",
    "box_sine_embedding",
    "ms_deform_attn_bilinear_gather",
    "ms_deform_attn_grid_sample",
    "ms_deform_attn_naive",
]
