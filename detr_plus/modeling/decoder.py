"""Deformable decoder with iterative box refinement, look-forward-twice, training routes and query groups.

Extension points (see the README):
* ``groups`` (``QueryGroup``) decode extra queries beside the primary ones in one pass, each group
  seeing only itself (and padded queries nothing), and come back split per group and per layer;
* ``routes`` give each layer extra branches that reuse the layer's shared results (``LayerBranch``),
  either reading the primary state (LoRA-DETR) or carrying their own query stream (Mr. DETR);
* every layer is ``self_attn -> cross_attn -> ffn`` blocks; ``layer_wrapper`` wraps each layer at
  construction (QR-DETR), and a layer may report which queries it ``updated`` and extra outputs;
* ``forward`` starts from any given ``DecoderQueries`` (e.g. an EMA teacher's);
* ``DecoderOutput`` keeps every layer's queries, reference boxes, logits and boxes.
"""
import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MLP, box_sine_embedding
from ..layers.box_ops import inverse_sigmoid
from .blocks import CrossAttentionBlock, FFNBlock, QueryContext, SelfAttentionBlock
from .groups import QueryGroup, group_attention_mask
from .structures import DecoderQueries, EncoderState

QUERY_POSITIONS = ("box_sine", "static")


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


@dataclass
class LayerOutput:
    """What a decoder layer (or a wrapper around one) returns.

    * ``hidden`` (B, Q, d): the output queries;
    * ``branch_outputs``: one output per route branch (None where a route has no branch);
    * ``updated`` (B, Q) bool or None: False for a query that bypassed the whole layer; it keeps its
      reference box instead of being refined by this layer's head (QR-DETR's EEQR_F);
    * ``extras``: further per-layer outputs (routing statistics, say); a ``LayerPredictions`` under a
      name the meta-architecture has a criterion for is supervised;
    * ``predict``: further query states (B, Q, d) that the decoder turns into ``LayerPredictions``
      with this layer's heads and reference boxes, into ``extras`` under the same name (QR-DETR's
      exit heads, "similar to the final prediction heads"); a ``(states, class_head, box_head)``
      tuple uses those heads instead.
    """

    hidden: torch.Tensor
    branch_outputs: List[Optional[torch.Tensor]] = field(default_factory=list)
    updated: Optional[torch.Tensor] = None
    extras: Dict[str, Any] = field(default_factory=dict)
    predict: Dict[str, Any] = field(default_factory=dict)


class DeformableDecoderLayer(nn.Module):
    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, num_heads=8, num_levels=4, num_points=4, attn_implementation="bilinear_gather"):
        super().__init__()
        self.self_attn = SelfAttentionBlock(d_model, num_heads, dropout)
        self.cross_attn = CrossAttentionBlock(d_model, num_heads, num_levels, num_points, dropout, attn_implementation)
        self.ffn = FFNBlock(d_model, d_ffn, dropout)

    def forward(self, query, context: QueryContext, branches: Sequence[Optional[LayerBranch]] = (),
                branch_inputs: Sequence[Optional[Tuple[torch.Tensor, QueryContext]]] = ()) -> LayerOutput:
        """The primary output and one output per branch (None where a branch is None).

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
        return LayerOutput(outs[0], [outs.get(i + 1) for i in range(len(branches))])

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
    """One decoder layer's predictions for one route or group: the criterion's input."""

    logits: torch.Tensor  # (B, Q, C)
    boxes: torch.Tensor  # (B, Q, 4) normalized cxcywh
    hidden: torch.Tensor  # (B, Q, d) the layer's output queries
    reference: torch.Tensor  # (B, Q, 4) (or (B, Q, 2) points) the layer's input reference, detached
    valid: Optional[torch.Tensor] = None  # (B, Q) bool, False on padded queries
    updated: Optional[torch.Tensor] = None  # (B, Q) bool, False where a query bypassed the layer
    extras: Dict[str, Any] = field(default_factory=dict)

    PER_QUERY = ("logits", "boxes", "hidden", "reference", "valid", "updated")

    def part(self, start: int, end: int) -> "LayerPredictions":
        """The predictions of queries ``start:end`` (one group of a joint pass); ``extras`` describe the
        joint pass and are not split."""
        sliced = {name: None if getattr(self, name) is None else getattr(self, name)[:, start:end] for name in self.PER_QUERY}
        return LayerPredictions(**sliced)


@dataclass
class DecoderOutput:
    layers: List[LayerPredictions]  # primary route, one per decoder layer
    routes: Dict[str, List[Optional[LayerPredictions]]] = field(default_factory=dict)
    groups: Dict[str, List[LayerPredictions]] = field(default_factory=dict)  # query groups, one per layer


@dataclass
class QueryStream:
    """One route's decoder state between layers."""

    query: torch.Tensor  # (B, Q, d)
    reference: torch.Tensor  # (B, Q, 4) detached reference boxes (or (B, Q, 2) points)
    reference_for_grad: torch.Tensor  # the same values; under look-forward-twice with the previous layer's refinement graph
    position: Optional[torch.Tensor] = None  # (B, Q, d) static positional part, or None: from the boxes


def refine_boxes(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """sigmoid(delta + inverse_sigmoid(reference)) (Deformable DETR Sec. A.4); a 2-d reference point
    offsets only the centre."""
    offset = inverse_sigmoid(reference)
    if reference.shape[-1] == 2:
        offset = F.pad(offset, (0, 2))
    return (delta + offset).sigmoid()


class DeformableDecoder(nn.Module):
    """Stack of decoder layers plus the per-layer class/box heads shared by every route and group.

    * ``query_position``: "box_sine" computes each layer's query positions from its reference boxes
      (sine embedding + MLP, DAB-DETR / DINO); "static" takes a fixed positional part with the
      queries (published Deformable DETR, whose positions do not change through the decoder).
    * ``box_refine``: each layer refines the boxes (Deformable DETR Sec. A.4); otherwise all layers
      predict from the initial references.
    * ``look_forward_twice`` (DINO Sec. 3.5): layer i's box prediction keeps the gradient into layer
      i - 1's refinement (never further back); the next layer's input reference is detached.
    * ``share_heads``: one class and one box head for every layer (DINO); default: shared exactly when
      ``box_refine`` is off (published Deformable DETR).
    * ``share_layers``: one set of decoder-layer parameters for every stage (OD-DETR Appendix B).
    * ``layer_wrapper(layer, index) -> nn.Module``: wraps each layer at construction (QR-DETR's EEQR);
      the wrapped module takes the layer's arguments and returns a ``LayerOutput``.
    """

    def __init__(self, num_layers=6, d_model=256, num_classes=80, box_refine=True, look_forward_twice=False,
                 share_heads: Optional[bool] = None, share_layers=False, query_position="box_sine",
                 layer_wrapper: Optional[Callable[[nn.Module, int], nn.Module]] = None, **layer_kwargs):
        super().__init__()
        if query_position not in QUERY_POSITIONS:
            raise ValueError(f"decoder.query_position={query_position!r}: expected one of {QUERY_POSITIONS}")
        if share_layers:
            shared = DeformableDecoderLayer(d_model=d_model, **layer_kwargs)
            layers = [shared] * num_layers
        else:
            layers = [DeformableDecoderLayer(d_model=d_model, **layer_kwargs) for _ in range(num_layers)]
        if layer_wrapper is not None:
            layers = [layer_wrapper(layer, index) for index, layer in enumerate(layers)]
        self.layers = nn.ModuleList(layers)
        self.d_model, self.box_refine, self.look_forward_twice = d_model, box_refine, look_forward_twice
        self.query_position, self.share_layers = query_position, share_layers
        self.share_heads = (not box_refine) if share_heads is None else share_heads
        if query_position == "box_sine":
            self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        class_head = nn.Linear(d_model, num_classes)
        nn.init.constant_(class_head.bias, -4.59511985)  # prior probability 0.01 (focal loss init)
        box_head = MLP(d_model, d_model, 4, 3)
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)
        if self.share_heads:
            self.class_heads = nn.ModuleList([class_head] * num_layers)
            self.box_heads = nn.ModuleList([box_head] * num_layers)
        else:
            self.class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_layers))
            self.box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_layers))

    # --- one layer's predictions and the next layer's state ------------------------------------
    def step(self, layer_index, hidden, stream: QueryStream, updated=None, heads=None) -> Tuple[LayerPredictions, QueryStream]:
        """The layer's predictions from its output queries, and the stream's state for the next layer.

        With box refinement, a query with ``updated`` False keeps its box: it is predicted at its input
        box and carries it on (a 2-d reference point has no box to keep: such a query is predicted by
        the head). Without refinement every query is predicted from its fixed reference anyway."""
        class_head, box_head = heads or (self.class_heads[layer_index], self.box_heads[layer_index])
        delta = box_head(hidden)
        boxes = refine_boxes(delta, stream.reference_for_grad)
        keep = None if updated is None or not self.box_refine or stream.reference.shape[-1] != 4 else updated[..., None]
        if keep is not None:
            boxes = torch.where(keep, boxes, stream.reference_for_grad)
        predictions = LayerPredictions(class_head(hidden), boxes, hidden, stream.reference, updated=updated)
        if not self.box_refine:
            return predictions, replace(stream, query=hidden)
        # Look forward twice: the next layer's box is refined from this layer's box, whose graph reaches
        # this layer's head but starts from the detached input reference (no gradient further back).
        refined = refine_boxes(delta, stream.reference) if self.look_forward_twice else boxes
        if keep is not None and self.look_forward_twice:
            refined = torch.where(keep, refined, stream.reference_for_grad)
        following = refined.detach()
        return predictions, QueryStream(hidden, following, refined if self.look_forward_twice else following, stream.position)

    def context_of(self, stream: QueryStream, state: EncoderState, self_attn_mask=None, query_padding_mask=None) -> QueryContext:
        if stream.position is not None:
            query_pos = stream.position
        elif self.query_position == "box_sine":
            if stream.reference.shape[-1] != 4:
                raise ValueError("box_sine query positions need 4-d reference boxes; give 2-d points a static position")
            query_pos = self.ref_point_head(box_sine_embedding(stream.reference, self.d_model // 2))
        else:
            raise ValueError("decoder.query_position='static' needs DecoderQueries.position")
        ratios = state.valid_ratios if stream.reference.shape[-1] == 2 else torch.cat([state.valid_ratios] * 2, -1)
        return QueryContext(
            query_pos=query_pos, reference_points=stream.reference[:, :, None] * ratios[:, None], memory=state.memory,
            spatial_shapes=state.spatial_shapes, level_start_index=state.level_start_index,
            memory_padding_mask=state.padding_mask, self_attn_mask=self_attn_mask, query_padding_mask=query_padding_mask)

    # --- the pass --------------------------------------------------------------------------------
    def forward(self, queries: DecoderQueries, state: EncoderState, routes: Optional[Mapping[str, nn.Module]] = None,
                groups: Optional[Mapping[str, QueryGroup]] = None,
                route_queries: Optional[Mapping[str, DecoderQueries]] = None) -> DecoderOutput:
        """Decodes the primary ``queries``, every query group (after them, masked from each other) and
        every route. A route with ``own_stream`` carries its own queries and reference boxes from layer
        to layer (starting from the primary input); the others branch at each layer from the primary
        state. Routes read only the primary queries' predictions (a stream route also carries the
        groups' queries, masked as in the primary pass, and drops their predictions).
        ``route_queries`` gives a stream route its own initial queries (as many as the primary ones)
        instead of the primary input (Mr. DETR's Route-3 with its own query selection)."""
        routes, groups = dict(routes or {}), dict(groups or {})
        sizes = [len(queries)] + [len(g.queries) for g in groups.values()]
        joint = DecoderQueries.concat([queries] + [g.queries for g in groups.values()]) if groups else queries
        mask = group_attention_mask(sizes, [g.sees_primary for g in groups.values()], joint.content.device) if groups else None
        padding = None if joint.valid is None else ~joint.valid
        primary = QueryStream(joint.content, joint.reference.detach(), joint.reference, joint.position)
        streams: Dict[str, Optional[QueryStream]] = {name: None for name in routes}  # None: reads the primary state
        for name, start in (route_queries or {}).items():
            if not getattr(routes.get(name), "own_stream", False):
                raise ValueError(f"route_queries[{name!r}]: only a decoded route with own_stream=True starts from its own queries")
            if len(start) != len(queries):
                raise ValueError(f"route_queries[{name!r}] has {len(start)} queries, the primary ones {len(queries)}")
            start = DecoderQueries.concat([start] + [g.queries for g in groups.values()]) if groups else start
            streams[name] = QueryStream(start.content, start.reference.detach(), start.reference, start.position)
        layers: List[LayerPredictions] = []
        out = DecoderOutput(layers=layers, routes={name: [] for name in routes})
        for index, layer in enumerate(self.layers):
            context = self.context_of(primary, state, mask, padding)
            branch_inputs = [None if s is None else (s.query, self.context_of(s, state, mask, padding)) for s in streams.values()]
            branches = [route.layer_branch(index) for route in routes.values()]
            # Only routes with their own stream need ``branch_inputs``; a wrapped layer (QR-DETR) that
            # does not take them still works with every other route.
            extra = {"branch_inputs": branch_inputs} if any(x is not None for x in branch_inputs) else {}
            result = layer(primary.query, context, branches, **extra)
            predictions, following = self.step(index, result.hidden, primary, result.updated)
            predictions.valid, predictions.extras = joint.valid, dict(result.extras)
            for name, states in result.predict.items():
                states, heads = (states[0], states[1:]) if isinstance(states, tuple) else (states, None)
                predictions.extras[name], _ = self.step(index, states, primary, heads=heads)
            layers.append(predictions)
            for (name, route), branch_out in zip(routes.items(), result.branch_outputs):
                source = streams[name] or primary
                routed = None
                if branch_out is not None:
                    if getattr(route, "detach_reference", False):
                        source = replace(source, reference_for_grad=source.reference)
                    routed, advanced = self.step(index, branch_out, source)
                    if getattr(route, "own_stream", False):
                        streams[name] = advanced
                out.routes[name].append(routed.part(0, sizes[0]) if routed is not None and groups else routed)
            primary = following
        if groups:
            bounds = torch.tensor(sizes).cumsum(0).tolist()
            out.layers = [p.part(0, sizes[0]) for p in layers]
            for (name, _), start, end in zip(groups.items(), bounds[:-1], bounds[1:]):
                out.groups[name] = [p.part(start, end) for p in layers]
            for primary_layer, joint_layer in zip(out.layers, layers):
                primary_layer.extras = joint_layer.extras
        return out
