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
    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, num_heads=8, num_levels=4, num_points=4, attn_implementation="auto"):
        super().__init__()
        self.self_attn = SelfAttentionBlock(d_model, num_heads, dropout)
        self.cross_attn = CrossAttentionBlock(d_model, num_heads, num_levels, num_points, dropout, attn_implementation)
        self.ffn = FFNBlock(d_model, d_ffn, dropout)

    def blocks_for(self, variant: Optional[LayerVariant] = None) -> List[Tuple[str, Block]]:
        """The layer's blocks in order, ``[(name, block(query, context) -> query)]``, with the blocks
        ``variant`` replaces swapped in (a wrapper composes these instead of rebuilding the layer)."""
        self_attn, cross_attn, ffn = self.self_attn, self.cross_attn, self.ffn
        if variant is not None and variant.replaces_self_attention:
            self_attn = partial(variant.self_attention, shared=self.self_attn)
        if variant is not None and variant.replaces_cross_attention:
            cross_attn = partial(variant.cross_attention, shared=self.cross_attn)
        if variant is not None and variant.replaces_ffn:
            ffn = partial(variant.feed_forward, shared=self.ffn)
        return [("self_attn", self_attn), ("cross_attn", cross_attn), ("ffn", ffn)]

    def forward(self, inputs: LayerInputs) -> LayerOutput:
        """The primary stream's output and one output per variant of ``inputs``.

        Work on the same input is done once, by name: a self-attention result is keyed by (the
        stream it reads, its owner: "shared" or the variant that replaces it); the shared
        cross-attention runs as one call over every distinct self-attention result that uses it (it
        treats queries independently, so concatenating them along the query axis is exact), a
        variant's own cross-attention on its own; an FFN result is keyed by (its cross-attention
        key, its owner)."""
        attended: Dict[Tuple[str, str], torch.Tensor] = {}
        plan = {}  # consumer -> (its cross-attention key, its cross-attention block, its FFN block, the FFN's owner)
        for name, variant in {PRIMARY: None, **inputs.variants}.items():
            blocks = dict(self.blocks_for(variant))
            stream = PRIMARY if variant is None else inputs.stream_of(name)
            key = (stream, SHARED if blocks["self_attn"] is self.self_attn else name)
            if key not in attended:
                attended[key] = blocks["self_attn"](inputs.streams[stream].query, inputs.streams[stream].context)
            cross_key = (key, SHARED if blocks["cross_attn"] is self.cross_attn else name)
            plan[name] = (cross_key, blocks["cross_attn"], blocks["ffn"], SHARED if blocks["ffn"] is self.ffn else name)
        shared_inputs = {key: attended[key] for (key, owner), *_ in plan.values() if owner == SHARED}
        crossed = {(key, SHARED): out for key, out in self._cross_attention(shared_inputs, inputs).items()}
        for (key, owner), cross_attn, _, _ in plan.values():
            if (key, owner) not in crossed:
                crossed[key, owner] = cross_attn(attended[key], inputs.streams[key[0]].context)
        outputs: Dict[str, torch.Tensor] = {}
        fed: Dict[Tuple[Tuple[Tuple[str, str], str], str], torch.Tensor] = {}
        for name, (cross_key, _, ffn, owner) in plan.items():
            if (cross_key, owner) not in fed:
                fed[cross_key, owner] = ffn(crossed[cross_key], inputs.streams[cross_key[0][0]].context)
            outputs[name] = fed[cross_key, owner]
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
