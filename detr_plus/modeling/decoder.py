"""Deformable decoder with iterative box refinement, look-forward-twice and training routes.

Extension points (see ``docs`` in the README):
* ``self_attn_mask`` decodes several query groups in one pass (``group_self_attn_mask``);
* ``routes`` give each layer extra branches that reuse the layer's shared results (``LayerBranch``);
* every layer is ``self_attn -> cross_attn -> ffn`` blocks that can be replaced or wrapped;
* ``forward`` starts from any given content queries and reference boxes;
* ``DecoderOutput`` keeps every layer's queries, reference boxes, logits and boxes.
"""
import copy
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..layers import MLP, box_sine_embedding
from ..layers.box_ops import inverse_sigmoid
from .blocks import CrossAttentionBlock, FFNBlock, QueryContext, SelfAttentionBlock


class LayerBranch(nn.Module):
    """One route's variant of one decoder layer (DESIGN.md's "training route").

    The base class shares everything: its output is the layer's primary output (Mr. DETR table
    row 2, "share all"). Subclasses set ``replaces_self_attention`` and/or ``replaces_ffn`` and
    override the matching method; each gets the layer's shared block so it can reuse its weights.
    """

    replaces_self_attention = False
    replaces_ffn = False

    def self_attention(self, query, context: QueryContext, shared: SelfAttentionBlock):
        raise NotImplementedError

    def feed_forward(self, query, context: QueryContext, shared: FFNBlock):
        return shared(query, context)


class DeformableDecoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, num_heads=8, num_levels=4, num_points=4, attn_implementation="bilinear_gather"):
        super().__init__()
        self.self_attn = SelfAttentionBlock(d_model, num_heads, dropout)
        self.cross_attn = CrossAttentionBlock(d_model, num_heads, num_levels, num_points, dropout, attn_implementation)
        self.ffn = FFNBlock(d_model, d_ffn, dropout)

    def forward(self, query, context: QueryContext, branches: Sequence[Optional[LayerBranch]] = ()):
        """Returns the primary output and one output per branch (None where a branch is None).

        Shared work is done once: self-attention for all branches that keep it, one cross-attention
        call over the primary queries and every branch's own self-attention output (cross-attention
        treats queries independently, so concatenating them along the query axis is exact).
        """
        attended = self.self_attn(query, context)
        own_sa = [b.self_attention(query, context, self.self_attn) if b is not None and b.replaces_self_attention else None for b in branches]
        extra = [q for q in own_sa if q is not None]
        if extra:
            num_queries = query.shape[1]
            crossed, *extra_crossed = self.cross_attn(torch.cat([attended, *extra], 1), context.repeat_queries(1 + len(extra))).split(num_queries, 1)
        else:
            crossed, extra_crossed = self.cross_attn(attended, context), []
        out = self.ffn(crossed, context)
        branch_outs, extra_crossed = [], iter(extra_crossed)
        for branch, sa in zip(branches, own_sa):
            if branch is None:
                branch_outs.append(None)
            elif sa is None and not branch.replaces_ffn:
                branch_outs.append(out)
            else:
                branch_outs.append(branch.feed_forward(crossed if sa is None else next(extra_crossed), context, self.ffn))
        return out, branch_outs


@dataclass
class LayerPredictions:
    """One decoder layer's predictions for one route: the criterion's input."""

    logits: torch.Tensor  # (B, Q, C)
    boxes: torch.Tensor  # (B, Q, 4) normalized cxcywh
    hidden: torch.Tensor  # (B, Q, d)
    reference: torch.Tensor  # (B, Q, 4) the layer's input reference boxes (detached)


@dataclass
class DecoderOutput:
    layers: List[LayerPredictions]  # primary route, one per decoder layer
    routes: Dict[str, List[Optional[LayerPredictions]]] = field(default_factory=dict)


class DeformableDecoder(nn.Module):
    """Stack of decoder layers plus the per-layer class/box heads shared by every route.

    Query positions are computed from each layer's reference boxes (sine embedding + MLP, as in
    DAB/DINO). With ``box_refine`` each layer has its own heads and refines the boxes (Deformable
    DETR Sec. 4.1 / A.4); with ``look_forward_twice`` (DINO Sec. 3.5) a layer's box prediction keeps
    the gradient to the previous layer's refinement, while the next layer still gets it detached.
    """

    def __init__(self, num_layers=6, d_model=256, num_classes=80, box_refine=True, look_forward_twice=False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers))
        self.d_model, self.box_refine, self.look_forward_twice = d_model, box_refine, look_forward_twice
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        class_head = nn.Linear(d_model, num_classes)
        nn.init.constant_(class_head.bias, -4.59511985)  # prior probability 0.01 (focal loss init)
        box_head = MLP(d_model, d_model, 4, 3)
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        if box_refine:
            self.class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_layers))
            self.box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_layers))
        else:
            self.class_heads = nn.ModuleList([class_head] * num_layers)
            self.box_heads = nn.ModuleList([box_head] * num_layers)

    def predict(self, layer_index, hidden, reference_for_grad, reference):
        boxes = (self.box_heads[layer_index](hidden) + inverse_sigmoid(reference_for_grad)).sigmoid()
        return LayerPredictions(self.class_heads[layer_index](hidden), boxes, hidden, reference)

    def forward(self, query, reference_boxes, memory, spatial_shapes, level_start_index, valid_ratios,
                memory_padding_mask=None, self_attn_mask=None, routes: Optional[Mapping[str, "nn.Module"]] = None):
        routes = dict(routes or {})
        out = DecoderOutput(layers=[], routes={name: [] for name in routes})
        reference = reference_boxes.detach()
        reference_for_grad = reference_boxes
        for index, layer in enumerate(self.layers):
            context = QueryContext(
                query_pos=self.ref_point_head(box_sine_embedding(reference, self.d_model // 2)),
                reference_points=reference[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None],
                memory=memory, spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                memory_padding_mask=memory_padding_mask, self_attn_mask=self_attn_mask,
            )
            branches = [route.layer_branch(index) for route in routes.values()]
            query, branch_outs = layer(query, context, branches)
            predictions = self.predict(index, query, reference_for_grad, reference)
            out.layers.append(predictions)
            for name, branch_out in zip(routes, branch_outs):
                out.routes[name].append(None if branch_out is None else self.predict(index, branch_out, reference_for_grad, reference))
            if self.box_refine:
                reference_for_grad = predictions.boxes if self.look_forward_twice else predictions.boxes.detach()
                reference = predictions.boxes.detach()
        return out


def group_self_attn_mask(group_sizes: Sequence[int], device=None) -> torch.Tensor:
    """(Q, Q) bool mask, True where a query may NOT attend: queries attend only within their group
    (H-DETR's hybrid groups, OD-DETR's auxiliary groups)."""
    group_of = torch.repeat_interleave(torch.arange(len(group_sizes), device=device), torch.tensor(list(group_sizes), device=device))
    return group_of[:, None] != group_of[None, :]
