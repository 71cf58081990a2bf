"""The single-scale transformer encoder of DETR-style models with standard attention (Conditional
DETR, DAB-DETR): post-norm layers of multi-head self-attention over every position of one feature
map (q = k = x + pos, v = x) and an FFN."""
from torch import nn

from ..layers import MLP
from .activation_checkpoint import call_layer
from .blocks import FFN


class StandardEncoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=2048, dropout=0.1, num_heads=8, activation="relu"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, d_ffn, dropout, activation)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, padding_mask):
        q = k = src + pos
        attended = self.self_attn(q, k, src, key_padding_mask=padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.ffn(src))


class StandardEncoder(nn.Module):
    """``num_layers`` post-norm layers; the same call as ``DeformableEncoder`` (the level shapes,
    start indices and valid ratios are not needed: one level, full attention with the padding masked).
    ``scale_position``: each layer sees its position embedding scaled elementwise by an MLP of its
    input (DAB-DETR's encoder; one MLP for all layers). ``checkpoint_layers``: activation
    checkpointing of each layer while training (``activation_checkpoint``)."""

    def __init__(self, num_layers=6, scale_position=False, checkpoint_layers=False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(StandardEncoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.checkpoint_layers = checkpoint_layers
        d_model = self.layers[0].norm1.normalized_shape[0]
        self.position_scale = MLP(d_model, d_model, d_model, 2) if scale_position else None

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask):
        for layer in self.layers:
            scaled = pos if self.position_scale is None else pos * self.position_scale(src)
            src = call_layer(layer, self.checkpoint_layers, src, scaled, padding_mask)
        return src
