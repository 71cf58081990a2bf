"""Decoder-layer sub-blocks with one signature, ``block(query, context) -> query``.

Every block owns its residual connection and norm, so a block can be swapped for a variant's
(``LayerVariant``: Mr. DETR's Route-1/3, LoRA-DETR's branches) or wrapped (QR-DETR's
gather / process / scatter) without touching the layer around it.
"""
from typing import Optional

import torch
from torch import nn

from ..layers import MultiScaleDeformableAttention
from .contracts import QueryContext


class SelfAttentionBlock(nn.Module):
    """Post-norm multi-head self-attention of the queries (content + position as query and key)."""

    def __init__(self, d_model=256, num_heads=8, dropout=0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def attend(self, query, query_pos, attn_mask=None, prefix=None, prefix_pos=None, need_weights=False):
        """Attention output for ``query``; optional ``prefix`` tokens join keys/values (their outputs are dropped)."""
        q = k = query + query_pos
        v = query
        if prefix is not None:
            k = torch.cat([prefix + prefix_pos, k], 1)
            v = torch.cat([prefix, v], 1)
        out, weights = self.attn(q, k, v, attn_mask=attn_mask, need_weights=need_weights, average_attn_weights=True)
        return (out, weights) if need_weights else out

    def forward(self, query, context: QueryContext):
        out = self.attend(query, context.query_pos, context.attention_mask(self.attn.num_heads))
        return self.norm(query + self.dropout(out))


class CrossAttentionBlock(nn.Module):
    """Deformable cross-attention of the queries to the encoder memory (Deformable DETR Eq. 3)."""

    def __init__(self, d_model=256, num_heads=8, num_levels=4, num_points=4, dropout=0.0, attn_implementation="auto"):
        super().__init__()
        self.attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points, attn_implementation)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query, context: QueryContext):
        out = self.attn(query + context.query_pos, context.reference_points, context.memory,
                        context.spatial_shapes, context.level_start_index, context.memory_padding_mask)
        return self.norm(query + self.dropout(out))


ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU}  # PReLU: DAB-DETR's FFNs (one learned slope)


class FFN(nn.Module):
    """The position-wise feed-forward network, W2 act(W1 x + b1) + b2 (LoRA-DETR Eq. 2), without residual."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, activation="relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"FFN activation={activation!r}: expected one of {list(ACTIVATIONS)}")
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = ACTIVATIONS[activation]()
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout2(self.linear2(self.dropout1(self.activation(self.linear1(x)))))


class FFNBlock(nn.Module):
    """Residual + norm around an FFN. ``forward(query, context, ffn=None)`` may run another FFN
    (a variant's own weights) inside this block's residual and shared norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, activation="relu"):
        super().__init__()
        self.ffn = FFN(d_model, d_ffn, dropout, activation)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query, context: Optional[QueryContext] = None, ffn: Optional[nn.Module] = None):
        return self.norm(query + (self.ffn if ffn is None else ffn)(query))
