"""Layer branches shared by several methods."""
from torch import nn

from .blocks import FFN, FFNBlock, QueryContext
from .decoder import LayerBranch


class OwnFFNBranch(LayerBranch):
    """A branch with its own FFN weights (both linears) inside the layer's shared residual and norm:
    Mr. DETR's Route-1 (in a route with its own query stream) and LoRA-DETR's "naive" multi-FFN
    architecture (Fig. 1(c), reading the primary route's post-cross-attention state)."""

    replaces_ffn = True

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0):
        super().__init__()
        self.ffn = FFN(d_model, d_ffn, dropout)

    def feed_forward(self, query, context: QueryContext, shared: FFNBlock):
        return shared(query, context, ffn=self.ffn)
