"""One deformable decoder layer: self-attention -> cross-attention -> FFN, for every stream at once."""
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .blocks import CrossAttentionBlock, FFNBlock, SelfAttentionBlock
from .contracts import PRIMARY, LayerInputs, LayerOutput, LayerVariant, QueryContext

SHARED = "shared"  # the owner of a block that is the layer's own, not a variant's
Block = Callable[[torch.Tensor, QueryContext], torch.Tensor]


class DeformableDecoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, num_heads=8, num_levels=4, num_points=4, attn_implementation="bilinear_gather"):
        super().__init__()
        self.self_attn = SelfAttentionBlock(d_model, num_heads, dropout)
        self.cross_attn = CrossAttentionBlock(d_model, num_heads, num_levels, num_points, dropout, attn_implementation)
        self.ffn = FFNBlock(d_model, d_ffn, dropout)

    def blocks_for(self, variant: Optional[LayerVariant] = None) -> List[Tuple[str, Block]]:
        """The layer's blocks in order, ``[(name, block(query, context) -> query)]``, with the blocks
        ``variant`` replaces swapped in (a wrapper composes these instead of rebuilding the layer)."""
        self_attn, ffn = self.self_attn, self.ffn
        if variant is not None and variant.replaces_self_attention:
            self_attn = partial(variant.self_attention, shared=self.self_attn)
        if variant is not None and variant.replaces_ffn:
            ffn = partial(variant.feed_forward, shared=self.ffn)
        return [("self_attn", self_attn), ("cross_attn", self.cross_attn), ("ffn", ffn)]

    def forward(self, inputs: LayerInputs) -> LayerOutput:
        """The primary stream's output and one output per variant of ``inputs``.

        Work on the same input is done once, by name: a self-attention result is keyed by (the
        stream it reads, its owner: "shared" or the variant that replaces it); cross-attention runs
        as one call over every distinct self-attention result (it treats queries independently, so
        concatenating them along the query axis is exact); an FFN result is keyed by (its
        self-attention key, its owner)."""
        attended: Dict[Tuple[str, str], torch.Tensor] = {}
        plan = {}  # consumer -> (its self-attention key, its FFN block, the FFN's owner)
        for name, variant in {PRIMARY: None, **inputs.variants}.items():
            blocks = dict(self.blocks_for(variant))
            stream = PRIMARY if variant is None else inputs.stream_of(name)
            key = (stream, SHARED if blocks["self_attn"] is self.self_attn else name)
            if key not in attended:
                attended[key] = blocks["self_attn"](inputs.streams[stream].query, inputs.streams[stream].context)
            plan[name] = (key, blocks["ffn"], SHARED if blocks["ffn"] is self.ffn else name)
        crossed = self._cross_attention(attended, inputs)
        outputs: Dict[str, torch.Tensor] = {}
        fed: Dict[Tuple[Tuple[str, str], str], torch.Tensor] = {}
        for name, (key, ffn, owner) in plan.items():
            if (key, owner) not in fed:
                fed[key, owner] = ffn(crossed[key], inputs.streams[key[0]].context)
            outputs[name] = fed[key, owner]
        return LayerOutput(outputs.pop(PRIMARY), variants=outputs)

    def _cross_attention(self, attended: Dict[Tuple[str, str], torch.Tensor], inputs: LayerInputs) -> Dict[Tuple[str, str], torch.Tensor]:
        """Cross-attention of every self-attention result with its stream's context, in one call."""
        keys = list(attended)
        contexts = [inputs.streams[stream].context for stream, _ in keys]
        if len(keys) == 1:
            return {keys[0]: self.cross_attn(attended[keys[0]], contexts[0])}
        sizes = [attended[k].shape[1] for k in keys]
        joint = self.cross_attn(torch.cat([attended[k] for k in keys], 1), QueryContext.concat(contexts))
        return dict(zip(keys, joint.split(sizes, 1)))
