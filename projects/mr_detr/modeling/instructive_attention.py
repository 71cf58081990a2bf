"""Route-3 of Mr. DETR: instructive self-attention (project page, "Method" and the attention-map
figure; docs/authors_code_facts.md#mr-detr-instructive-self-attention)."""
from typing import Optional

import torch
from torch import nn

from detr_plus.modeling import LayerVariant, QueryContext, SelfAttentionBlock


class InstructiveSelfAttentionBranch(LayerVariant):
    """One decoder layer's Route-3 variant: the layer's shared self-attention weights, with
    ``num_tokens`` learnable instruction tokens (a content and a position embedding, each
    ``num_tokens x d``) prepended to the keys (content + position) and values (content); the
    tokens' own outputs are dropped (only object queries are queries). Route-3 has its own
    LayerNorm after self-attention; cross-attention, FFN and heads are the layer's shared ones.

    Masking: every object query sees every token (no mask, as in the Deformable-DETR variant). The
    context's query-group mask (``QueryContext.self_attn_mask``) is kept for the queries. The
    queries of query groups (``QueryContext.group_queries``, e.g. DINO's denoising queries) do not
    see the tokens unless ``instruct_groups``: in the authors' DINO code only the matching queries
    are instructed.
    """

    replaces_self_attention = True

    def __init__(self, d_model: int = 256, num_tokens: int = 10, instruct_groups: bool = False):
        super().__init__()
        # Xavier-uniform like every other matrix (the authors' code re-initialises every parameter with
        # more than one dimension so): small tokens, not N(0, 1) ones that would dominate the keys.
        self.token_content = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_tokens, d_model)))
        self.token_pos = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_tokens, d_model)))
        self.norm = nn.LayerNorm(d_model)
        self.instruct_groups = instruct_groups

    @property
    def num_tokens(self) -> int:
        return self.token_content.shape[0]

    def attn_mask(self, context: QueryContext, num_heads: int) -> Optional[torch.Tensor]:
        """The mask ``nn.MultiheadAttention`` takes over the keys [tokens, queries], True where a
        query may NOT attend: (Q, T + Q), or (B * heads, Q, T + Q) with padded queries or per-image
        masks; None when nothing is masked."""
        to_queries = context.attention_mask(num_heads)  # the query-group and padding masks
        hide_tokens = None if self.instruct_groups else context.group_queries  # (B, Q)
        if hide_tokens is None:
            if to_queries is None:
                return None
            return torch.cat([to_queries.new_zeros(*to_queries.shape[:-1], self.num_tokens), to_queries], -1)
        batch, num_queries = hide_tokens.shape
        to_tokens = hide_tokens[:, :, None].expand(batch, num_queries, self.num_tokens).repeat_interleave(num_heads, 0)
        if to_queries is None:
            to_queries = hide_tokens.new_zeros(num_queries, num_queries)
        return torch.cat([to_tokens, to_queries.expand(batch * num_heads, num_queries, num_queries)], -1)

    def attend(self, query, context: QueryContext, shared: SelfAttentionBlock, need_weights: bool = False):
        """The instructive attention output (B, Q, d); with ``need_weights`` also the head-averaged
        weights (B, Q, T + Q), keys ordered [instruction tokens, object queries] (the figure's axes)."""
        batch, num_queries = query.shape[:2]
        prefix = self.token_content[None].expand(batch, -1, -1)
        prefix_pos = self.token_pos[None].expand(batch, -1, -1)
        mask = self.attn_mask(context, shared.attn.num_heads)
        return shared.attend(query, context.query_pos, mask, prefix=prefix, prefix_pos=prefix_pos, need_weights=need_weights)

    def self_attention(self, query, context: QueryContext, shared: SelfAttentionBlock):
        return self.norm(query + shared.dropout(self.attend(query, context, shared)))
