"""Deformable transformer encoder (Deformable DETR Sec. 4.1): deformable self-attention over all levels."""
import torch
from torch import nn

from ..layers import MultiScaleDeformableAttention
from ..layers.level_shapes import level_sizes
from .activation_checkpoint import call_layer
from .blocks import FFN


class DeformableEncoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, num_heads=8, num_levels=4, num_points=4, attn_implementation="auto"):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points, attn_implementation)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, d_ffn, dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.ffn(src))


class DeformableEncoder(nn.Module):
    """``num_layers`` deformable encoder layers; ``checkpoint_layers``: activation checkpointing of
    each layer while training (``activation_checkpoint``)."""

    def __init__(self, num_layers=6, checkpoint_layers=False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.checkpoint_layers = checkpoint_layers

    @staticmethod
    def reference_points(spatial_shapes, valid_ratios):
        """Pixel centres of every level, normalized by each image's valid (unpadded) extent: (B, S, L, 2)."""
        points = []
        for level, (h, w) in enumerate(level_sizes(spatial_shapes)):
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, device=valid_ratios.device),
                torch.linspace(0.5, w - 0.5, w, device=valid_ratios.device),
                indexing="ij",
            )
            ys = ys.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * h)
            xs = xs.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * w)
            points.append(torch.stack([xs, ys], -1))
        points = torch.cat(points, 1)
        return points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask):
        reference_points = self.reference_points(spatial_shapes, valid_ratios)
        for layer in self.layers:
            src = call_layer(layer, self.checkpoint_layers, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src
