"""Standard-attention decoder blocks of Conditional DETR (Meng et al. 2021, arXiv:2108.06152) and
DAB-DETR (Liu et al. 2022, arXiv:2201.12329), as blocks of the core's decoder layer.

Both decoders keep the content and the position of a query apart: self-attention adds separately
projected content and position (``ConditionalSelfAttentionBlock``), and cross-attention
concatenates, per head, the content part with a spatial part (Conditional DETR Sec. 3.3, Eq. 2:
the query's spatial query, the key's image position), so the attention weight is the sum of a
content and a spatial dot product (``ConditionalCrossAttentionBlock``). The spatial query is
``ConditionalSpatialQuery``: the sine embedding of the reference point scaled by a vector lambda of
the decoder embedding (Sec. 3.3, "p_q = T s", T = diag(lambda)), with DAB-DETR's width / height
modulation (DAB-DETR Eq. 6). The decoder computes it once per layer for every query
(``QueryContext.spatial_query``), so a wrapper (QR-DETR's routing) gathers it with the queries.
"""
import math
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MLP
from ..layers.position_encoding import sine_features
from .blocks import FFNBlock
from .contracts import QueryContext
from .decoder_layer import DeformableDecoderLayer


def multi_head_attention(q, k, v, num_heads, blocked=None, key_padding=None, dropout=0.0):
    """Scaled dot-product attention of (B, Lq, H * dq) queries over (B, Lk, H * dq) keys and
    (B, Lk, H * dv) values, head h taking the h-th slices; scale 1 / sqrt(dq). ``blocked``: (Lq, Lk)
    or (B * H, Lq, Lk) bool, True where a query may not attend; ``key_padding`` (B, Lk) True on padded
    keys. Returns (B, Lq, H * dv)."""
    batch, num_q, num_k = q.shape[0], q.shape[1], k.shape[1]

    def heads(x):
        return x.view(batch, x.shape[1], num_heads, -1).transpose(1, 2)

    allowed = None
    if blocked is not None:
        allowed = ~(blocked if blocked.dim() == 2 else blocked.view(batch, num_heads, num_q, num_k))
    if key_padding is not None:
        keys = ~key_padding[:, None, None, :]
        allowed = keys if allowed is None else allowed & keys
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=allowed, dropout_p=dropout)
    return out.transpose(1, 2).reshape(batch, num_q, -1)


class ConditionalSelfAttentionBlock(nn.Module):
    """Post-norm self-attention with separate content and position projections of queries and keys:
    q = W_qc c + W_qp p, k = W_kc c + W_kp p, v = W_v c (Conditional DETR's and DAB-DETR's decoder)."""

    def __init__(self, d_model=256, num_heads=8, dropout=0.0):
        super().__init__()
        self.num_heads, self.attention_dropout = num_heads, dropout
        self.q_content, self.q_position = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.k_content, self.k_position = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.value, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query, context: QueryContext):
        q = self.q_content(query) + self.q_position(context.query_pos)
        k = self.k_content(query) + self.k_position(context.query_pos)
        out = multi_head_attention(q, k, self.value(query), self.num_heads, context.attention_mask(self.num_heads),
                                   dropout=self.attention_dropout if self.training else 0.0)
        return self.norm(query + self.dropout(self.out_proj(out)))


class ConditionalCrossAttentionBlock(nn.Module):
    """Conditional cross-attention (Conditional DETR Sec. 3.3, Eq. 2): per head h,
    q_h = [c_q,h ; (W_s p_s)_h] and k_h = [c_k,h ; (W_kp p_k)_h], so the weight is
    exp(c_q,h . c_k,h + p_s,h . p_k,h) / sqrt(2 d_h); values W_v memory. ``first_layer``: the first
    layer also adds the projected query position to the content query and the key position to the
    key's content (the official decoders; later layers have no such projection)."""

    def __init__(self, d_model=256, num_heads=8, dropout=0.0, first_layer=True):
        super().__init__()
        self.num_heads, self.attention_dropout = num_heads, dropout
        self.q_content, self.k_content = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.k_position, self.q_spatial = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.q_position = nn.Linear(d_model, d_model) if first_layer else None
        self.value, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, query, context: QueryContext):
        if context.spatial_query is None or context.memory_pos is None:
            raise ValueError("conditional cross-attention needs QueryContext.spatial_query (decoder.spatial_query) "
                             "and memory_pos (the transformer's encoder state)")
        q, k = self.q_content(query), self.k_content(context.memory)
        k_pos = self.k_position(context.memory_pos)
        if self.q_position is not None:
            q, k = q + self.q_position(context.query_pos), k + k_pos
        batch, num_q, num_k, heads = q.shape[0], q.shape[1], k.shape[1], self.num_heads
        q = torch.cat([q.view(batch, num_q, heads, -1), self.q_spatial(context.spatial_query).view(batch, num_q, heads, -1)], -1)
        k = torch.cat([k.view(batch, num_k, heads, -1), k_pos.view(batch, num_k, heads, -1)], -1)
        out = multi_head_attention(q.flatten(2), k.flatten(2), self.value(context.memory), heads,
                                   key_padding=context.memory_padding_mask,
                                   dropout=self.attention_dropout if self.training else 0.0)
        return self.norm(query + self.dropout(self.out_proj(out)))


class ConditionalDecoderLayer(DeformableDecoderLayer):
    """Self-attention -> conditional cross-attention -> FFN: the core decoder layer (its streams,
    variants and wrappers) with Conditional DETR's / DAB-DETR's blocks. ``specialise(index)`` drops
    the first-layer-only query position projection from the layers after the first."""

    def __init__(self, d_model=256, d_ffn=2048, dropout=0.1, num_heads=8, activation="relu"):
        nn.Module.__init__(self)
        self.self_attn = ConditionalSelfAttentionBlock(d_model, num_heads, dropout)
        self.cross_attn = ConditionalCrossAttentionBlock(d_model, num_heads, dropout)
        self.ffn = FFNBlock(d_model, d_ffn, dropout, activation)

    def specialise(self, index: int):
        if index > 0:
            self.cross_attn.q_position = None
        return self


class ConditionalSpatialQuery(nn.Module):
    """The spatial query of every query in a layer (Conditional DETR Sec. 3.3): p_s = lambda_q * s,
    s = sine embedding of the reference point (x, y) (d / 2 features per coordinate, in the order
    (y, x)), lambda_q = 1 in the first layer and MLP(f) of the layer's input embedding f after.

    ``modulate_hw`` (DAB-DETR Eq. 6): the x features are also scaled by w_ref / w and the y features
    by h_ref / h, with (w_ref, h_ref) = sigmoid(MLP(f)) in every layer and (w, h) the anchor's size."""

    def __init__(self, d_model=256, modulate_hw=False):
        super().__init__()
        self.d_model = d_model
        self.scale = MLP(d_model, d_model, d_model, 2)
        self.reference_size = MLP(d_model, d_model, 2, 2) if modulate_hw else None

    def forward(self, query: torch.Tensor, reference: torch.Tensor, layer_index: int) -> torch.Tensor:
        half = self.d_model // 2
        sine = torch.cat([sine_features(reference[..., 1] * 2 * math.pi, half), sine_features(reference[..., 0] * 2 * math.pi, half)], -1)
        spatial = sine if layer_index == 0 else sine * self.scale(query)
        if self.reference_size is None:
            return spatial
        if reference.shape[-1] != 4:
            raise ValueError("width / height modulation (DAB-DETR) needs 4-d anchor boxes")
        size = self.reference_size(query).sigmoid()  # (w_ref, h_ref)
        ratio_y = (size[..., 1] / reference[..., 3])[..., None]
        ratio_x = (size[..., 0] / reference[..., 2])[..., None]
        return torch.cat([spatial[..., :half] * ratio_y, spatial[..., half:] * ratio_x], -1)
