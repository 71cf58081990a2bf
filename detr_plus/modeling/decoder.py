"""Deformable decoder with iterative box refinement, look-forward-twice and training routes.

Extension points (see ``docs`` in the README):
* ``self_attn_mask`` decodes several query groups in one pass (``group_self_attn_mask``);
* ``routes`` give each layer extra branches that reuse the layer's shared results (``LayerBranch``),
  either reading the primary state (LoRA-DETR) or carrying their own query stream (Mr. DETR);
* every layer is ``self_attn -> cross_attn -> ffn`` blocks that can be replaced or wrapped;
* ``forward`` starts from any given content queries and reference boxes;
* ``DecoderOutput`` keeps every layer's queries, reference boxes, logits and boxes.
"""
import copy
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

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

    def forward(self, query, context: QueryContext, branches: Sequence[Optional[LayerBranch]] = (),
                branch_inputs: Sequence[Optional[Tuple[torch.Tensor, QueryContext]]] = ()):
        """Returns the primary output and one output per branch (None where a branch is None).

        A branch reads the primary ``(query, context)`` unless ``branch_inputs`` gives it its own
        (a route that carries its own query stream). Work on identical inputs is done once: the
        shared self-attention of the primary input, and the shared FFN of one cross-attention output.
        Cross-attention runs as one call over every distinct self-attention output (it treats queries
        independently, so concatenating them along the query axis is exact).
        """
        inputs = [(query, context)] + [
            (query, context) if index >= len(branch_inputs) or branch_inputs[index] is None else branch_inputs[index]
            for index in range(len(branches))]
        active = [None] + list(branches)  # None at 0: the primary route with the shared blocks
        live = [0] + [i + 1 for i, b in enumerate(branches) if b is not None]
        attended_primary = self.self_attn(query, context)
        attended = {}
        for i in live:
            q, ctx = inputs[i]
            branch = active[i]
            if branch is not None and branch.replaces_self_attention:
                attended[i] = branch.self_attention(q, ctx, self.self_attn)
            else:
                attended[i] = attended_primary if q is query and ctx is context else self.self_attn(q, ctx)
        crossed = self._batched_cross_attention(attended, inputs)
        outs, shared_ffn_outs = {}, {}
        for i in live:
            branch, ctx = active[i], inputs[i][1]
            if branch is not None and branch.replaces_ffn:
                outs[i] = branch.feed_forward(crossed[i], ctx, self.ffn)
                continue
            key = id(crossed[i])
            if key not in shared_ffn_outs:
                shared_ffn_outs[key] = self.ffn(crossed[i], ctx)
            outs[i] = shared_ffn_outs[key]
        return outs[0], [outs.get(i + 1) for i in range(len(branches))]

    def _batched_cross_attention(self, attended: Dict[int, torch.Tensor], inputs) -> Dict[int, torch.Tensor]:
        """Cross-attention of every distinct (self-attention output, context) pair, in one call."""
        sources: Dict[Tuple[int, int], int] = {}  # (id(query), id(context)) -> first stream with it
        for i, value in attended.items():
            sources.setdefault((id(value), id(inputs[i][1])), i)
        distinct = list(sources.values())
        if len(distinct) == 1:
            results = [self.cross_attn(attended[distinct[0]], inputs[distinct[0]][1])]
        else:
            joint_context = QueryContext.concat([inputs[i][1] for i in distinct])
            sizes = [attended[i].shape[1] for i in distinct]
            results = self.cross_attn(torch.cat([attended[i] for i in distinct], 1), joint_context).split(sizes, 1)
        by_source = dict(zip(distinct, results))
        return {i: by_source[sources[(id(value), id(inputs[i][1]))]] for i, value in attended.items()}


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

    def predict(self, layer_index, hidden, stream: "QueryStream") -> LayerPredictions:
        boxes = (self.box_heads[layer_index](hidden) + inverse_sigmoid(stream.reference_for_grad)).sigmoid()
        return LayerPredictions(self.class_heads[layer_index](hidden), boxes, hidden, stream.reference)

    def advance(self, hidden, predictions: LayerPredictions, stream: "QueryStream") -> "QueryStream":
        """The stream's state for the next layer: its output queries and, with ``box_refine``, its refined boxes."""
        if not self.box_refine:
            return QueryStream(hidden, stream.reference, stream.reference_for_grad)
        boxes = predictions.boxes
        return QueryStream(hidden, boxes.detach(), boxes if self.look_forward_twice else boxes.detach())

    def forward(self, query, reference_boxes, memory, spatial_shapes, level_start_index, valid_ratios,
                memory_padding_mask=None, self_attn_mask=None, routes: Optional[Mapping[str, "nn.Module"]] = None):
        """Decodes the primary queries and every route. A route with ``own_stream`` carries its own
        queries and reference boxes from layer to layer (it starts from the primary input); the
        others branch at each layer from the primary route's state (module variants only)."""
        routes = dict(routes or {})
        out = DecoderOutput(layers=[], routes={name: [] for name in routes})
        scale = torch.cat([valid_ratios, valid_ratios], -1)[:, None]

        def context_of(reference):
            return QueryContext(
                query_pos=self.ref_point_head(box_sine_embedding(reference, self.d_model // 2)),
                reference_points=reference[:, :, None] * scale, memory=memory, spatial_shapes=spatial_shapes,
                level_start_index=level_start_index, memory_padding_mask=memory_padding_mask, self_attn_mask=self_attn_mask)

        primary = QueryStream(query, reference_boxes.detach(), reference_boxes)
        streams: Dict[str, Optional[QueryStream]] = {name: None for name in routes}  # None: reads the primary state
        for index, layer in enumerate(self.layers):
            context = context_of(primary.reference)
            branch_inputs = [None if s is None else (s.query, context_of(s.reference)) for s in streams.values()]
            branches = [route.layer_branch(index) for route in routes.values()]
            # Only routes with their own stream need ``branch_inputs``; a wrapped layer (QR-DETR) that
            # does not take them still works with every other route.
            extra = {"branch_inputs": branch_inputs} if any(x is not None for x in branch_inputs) else {}
            hidden, branch_outs = layer(primary.query, context, branches, **extra)
            predictions = self.predict(index, hidden, primary)
            out.layers.append(predictions)
            for (name, route), branch_out in zip(routes.items(), branch_outs):
                source = streams[name] or primary
                routed = None if branch_out is None else self.predict(index, branch_out, source)
                out.routes[name].append(routed)
                if getattr(route, "own_stream", False):
                    streams[name] = self.advance(branch_out, routed, source)
            primary = self.advance(hidden, predictions, primary)
        return out


@dataclass
class QueryStream:
    """One route's decoder state between layers."""

    query: torch.Tensor  # (B, Q, d)
    reference: torch.Tensor  # (B, Q, 4) detached reference boxes
    reference_for_grad: torch.Tensor  # the same boxes, with gradient under look-forward-twice


def group_self_attn_mask(group_sizes: Sequence[int], device=None) -> torch.Tensor:
    """(Q, Q) bool mask, True where a query may NOT attend: queries attend only within their group
    (H-DETR's hybrid groups, OD-DETR's auxiliary groups)."""
    group_of = torch.repeat_interleave(torch.arange(len(group_sizes), device=device), torch.tensor(list(group_sizes), device=device))
    return group_of[:, None] != group_of[None, :]
