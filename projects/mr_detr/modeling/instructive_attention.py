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

    Masking: by default every object query sees every token (no mask, as in the Deformable-DETR
    variant). The context's query-group mask (``QueryContext.self_attn_mask``) is kept for the
    queries, and ``num_unprompted_queries`` hides the tokens from the first N queries (e.g. DINO's
    denoising groups, which come first), so only the matching queries are instructed.
    """

    replaces_self_attention = True

    def __init__(self, d_model: int = 256, num_tokens: int = 10, num_unprompted_queries: int = 0):
        super().__init__()
        # Xavier-uniform like every other matrix (the authors' code re-initialises every parameter with
        # more than one dimension so): small tokens, not N(0, 1) ones that would dominate the keys.
        self.token_content = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_tokens, d_model)))
        self.token_pos = nn.Parameter(nn.init.xavier_uniform_(torch.empty(num_tokens, d_model)))
        self.norm = nn.LayerNorm(d_model)
        self.num_unprompted_queries = num_unprompted_queries

    @property
    def num_tokens(self) -> int:
        return self.token_content.shape[0]

    def attn_mask(self, context: QueryContext, num_queries: int, device) -> Optional[torch.Tensor]:
        """(Q, T + Q) bool mask, True where a query may NOT attend, or None (no mask)."""
        if context.self_attn_mask is None and self.num_unprompted_queries == 0:
            return None
        to_tokens = torch.zeros(num_queries, self.num_tokens, dtype=torch.bool, device=device)
        to_tokens[: self.num_unprompted_queries] = True
        to_queries = context.self_attn_mask
        if to_queries is None:
            to_queries = torch.zeros(num_queries, num_queries, dtype=torch.bool, device=device)
        return torch.cat([to_tokens, to_queries.to(device=device, dtype=torch.bool)], 1)

    def attend(self, query, context: QueryContext, shared: SelfAttentionBlock, need_weights: bool = False):
        """The instructive attention output (B, Q, d); with ``need_weights`` also the head-averaged
        weights (B, Q, T + Q), keys ordered [instruction tokens, object queries] (the figure's axes)."""
        batch, num_queries = query.shape[:2]
        prefix = self.token_content[None].expand(batch, -1, -1)
        prefix_pos = self.token_pos[None].expand(batch, -1, -1)
        mask = self.attn_mask(context, num_queries, query.device)
        return shared.attend(query, context.query_pos, mask, prefix=prefix, prefix_pos=prefix_pos, need_weights=need_weights)

    def self_attention(self, query, context: QueryContext, shared: SelfAttentionBlock):
        return self.norm(query + shared.dropout(self.attend(query, context, shared)))
