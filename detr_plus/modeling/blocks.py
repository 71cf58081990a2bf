"""Decoder-layer sub-blocks with one signature, ``block(query, context) -> query``.

Every block owns its residual connection and norm, so a block can be swapped for a route-specific
variant (Mr. DETR Route-1/3, LoRA-DETR branches) or wrapped (QR-DETR's gather/route/scatter)
without touching the layer around it.
"""
from dataclasses import dataclass, fields, replace
from typing import Optional, Union

import torch
from torch import nn

from ..layers import MultiScaleDeformableAttention
from .gather import QuerySubset


@dataclass
class QueryContext:
    """What a decoder layer's blocks read besides the queries.

    Per-query fields (``PER_QUERY``) are indexed along dim 1 together with the queries, so a wrapper
    that decodes a subset of queries calls ``context.select(subset)``; the rest is shared.
    ``self_attn_mask`` is (Q, Q), or (B, Q, Q) when it differs per image, True where a query may not
    attend; ``query_padding_mask`` (B, Q) is True on padded queries, which no query attends to.
    """

    query_pos: torch.Tensor  # (B, Q, d)
    reference_points: torch.Tensor  # (B, Q, L, 4) boxes (or (B, Q, L, 2) points) scaled by valid ratios
    memory: torch.Tensor  # (B, S, d)
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    memory_padding_mask: Optional[torch.Tensor] = None  # (B, S), True on padding
    self_attn_mask: Optional[torch.Tensor] = None  # (Q, Q) or (B, Q, Q) bool, True = may not attend
    query_padding_mask: Optional[torch.Tensor] = None  # (B, Q) bool, True on padded queries

    PER_QUERY = ("query_pos", "reference_points")

    def select(self, subset: Union[QuerySubset, torch.Tensor]) -> "QueryContext":
        """Context for the queries of ``subset`` (a ``QuerySubset``, or a (B, K) index of distinct
        positions per image): per-query fields, the self-attention mask's rows and columns and the
        padding mask are gathered; padded slots of the subset become padded queries."""
        if isinstance(subset, torch.Tensor):
            subset = QuerySubset(subset, torch.ones(subset.shape, dtype=torch.bool, device=subset.device))
        picked = {name: subset.gather(getattr(self, name)) for name in self.PER_QUERY}
        if self.self_attn_mask is not None:
            mask = self.self_attn_mask
            if mask.dim() == 2:
                mask = mask.expand(subset.index.shape[0], -1, -1)
            rows = subset.gather(mask)  # (B, K, Q)
            picked["self_attn_mask"] = rows.gather(2, subset.index[:, None, :].expand(-1, subset.size, -1))
        padding = ~subset.valid if subset.padded else None
        if self.query_padding_mask is not None:
            inherited = subset.gather(self.query_padding_mask)
            padding = inherited if padding is None else padding | inherited
        picked["query_padding_mask"] = padding
        return replace(self, **picked)

    @staticmethod
    def concat(contexts) -> "QueryContext":
        """Context for the queries of ``contexts`` concatenated along dim 1 (same memory, e.g. several
        routes' query streams in one cross-attention call); the first one's self-attention mask is kept."""
        first = contexts[0]
        return replace(first, **{name: torch.cat([getattr(c, name) for c in contexts], 1) for name in first.PER_QUERY})

    def attention_mask(self, num_heads: int) -> Optional[torch.Tensor]:
        """The mask ``nn.MultiheadAttention`` takes: ``self_attn_mask`` as is when it is (Q, Q) and
        nothing is padded; otherwise (B * heads, Q, Q) with padded keys blocked. A padded query may
        attend to itself, so no row is blocked entirely (a fully blocked row gives NaN, and NaN values
        poison every query through the attention product even with weight 0)."""
        mask, padding = self.self_attn_mask, self.query_padding_mask
        if padding is None and (mask is None or mask.dim() == 2):
            return mask
        if padding is not None:
            batch, num = padding.shape
            blocked = padding[:, None, :].expand(batch, num, num)
            blocked = blocked if mask is None else blocked | mask
            own = torch.eye(num, dtype=torch.bool, device=padding.device) & padding[:, :, None]
            mask = blocked & ~own
        return mask.repeat_interleave(num_heads, 0)


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

    def __init__(self, d_model=256, num_heads=8, num_levels=4, num_points=4, dropout=0.0, attn_implementation="bilinear_gather"):
        super().__init__()
        self.attn = MultiScaleDeformableAttention(d_model, num_heads, num_levels, num_points, attn_implementation)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query, context: QueryContext):
        out = self.attn(query + context.query_pos, context.reference_points, context.memory,
                        context.spatial_shapes, context.level_start_index, context.memory_padding_mask)
        return self.norm(query + self.dropout(out))


class FFN(nn.Module):
    """The position-wise feed-forward network, W2 act(W1 x + b1) + b2 (LoRA-DETR Eq. 2), without residual."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout2(self.linear2(self.dropout1(torch.relu(self.linear1(x)))))


class FFNBlock(nn.Module):
    """Residual + norm around an FFN. ``forward(query, context, ffn=None)`` may run another FFN
    (a route's own weights) inside this block's residual and shared norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0):
        super().__init__()
        self.ffn = FFN(d_model, d_ffn, dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query, context: Optional[QueryContext] = None, ffn: Optional[nn.Module] = None):
        return self.norm(query + (self.ffn if ffn is None else ffn)(query))
