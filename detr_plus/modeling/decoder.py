"""The deformable decoder: a stack of layers with iterative box refinement and look-forward-twice.

One pass decodes the primary queries, every query group (``JointQueries``) and every decoder
variant (``VariantStreams``); each layer is called with the same ``LayerInputs`` (wrapped or not) and
its outputs become per-layer predictions with the layer's class and box heads. ``forward`` starts
from any given ``DecoderQueries`` (e.g. an EMA teacher's); ``DecoderOutput`` keeps every layer's
queries, reference boxes, logits and boxes.
"""
import copy
from dataclasses import replace
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import MLP, box_sine_embedding
from ..layers.box_ops import inverse_sigmoid
from .activation_checkpoint import call_layer
from .contracts import (PRIMARY, DecoderOutput, DecoderQueries, DecoderVariant, EncoderState, LayerInputs, LayerPredictions, LayerWrapper,
                        PredictWith, QueryContext, QueryGroup, QueryStream, Stream)
from .decoder_layer import DeformableDecoderLayer
from .groups import JointQueries
from .heads import init_detection_heads
from .variants import VariantStreams

QUERY_POSITIONS = ("box_sine", "static")


def refine_boxes(delta: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """sigmoid(delta + inverse_sigmoid(reference)) (Deformable DETR Sec. A.4); a 2-d reference point
    offsets only the centre. ``eps`` clamps the inverse sigmoid (1e-5 in Deformable DETR's code,
    1e-3 in DINO's)."""
    offset = inverse_sigmoid(reference, eps)
    if reference.shape[-1] == 2:
        offset = F.pad(offset, (0, 2))
    return (delta + offset).sigmoid()


class DeformableDecoder(nn.Module):
    """Stack of decoder layers plus the per-layer class/box heads shared by every variant and group.

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
    * ``initial_reference_grad``: the initial reference points are not detached before the deformable
      sampling, so the sampling gradient trains what made them (the reference-point layer and the
      positional query embedding), as the official Deformable-DETR decoder does; later layers'
      references (from refinement) are detached either way. Off: only the box losses train them.
    * ``box_wh_bias``: the initial bias of the first layer's box head's w / h outputs (-2.0 in the
      official single-stage and refine models: first boxes about 0.12 wide; 0 in its two-stage
      model). Later layers' heads start at 0, which with refinement keeps the w / h they are given
      (the official refine model sets only its first head); a head shared by non-refining layers
      (the single-stage model) gets it, one shared by refining layers (OD-DETR's shared decoder) not.
    * ``output_norm``: a LayerNorm (one for every layer) between each layer's output and the heads'
      predictions, while the refinement chain (the next layer's reference) reads the un-normalised
      output: DINO's decoder, whose loss boxes are ``box_head(norm(h_i))`` on the undetached
      reference and whose next references are ``box_head(h_i)``. ``LayerPredictions.hidden`` stays
      the layer's output (the next layer's input).
    * ``inverse_sigmoid_eps``: the clamp of the refinement's inverse sigmoid (DINO: 1e-3).
    * ``layer_wrapper(layer, index) -> nn.Module``: wraps each layer at construction (QR-DETR's EEQR);
      the wrapped module takes ``LayerInputs`` and returns a ``LayerOutput`` (``contracts.DecoderLayer``).
    * ``layer_class``: the layers, built as ``layer_class(d_model=..., **layer_kwargs)`` and, when it
      has one, ``layer.specialise(index)`` (``DeformableDecoderLayer``; ``ConditionalDecoderLayer``:
      Conditional DETR / DAB-DETR).
    * ``spatial_query``: a module ``(layer input, reference, layer index) -> (B, Q, d)`` computed for
      every query of every layer into ``QueryContext.spatial_query`` (``ConditionalSpatialQuery``).
    * ``position_in_valid_region``: "box_sine" positions from the box in the first level's
      valid-region coordinates (DAB-Deformable-DETR, DINO), else from the box as is (DAB-DETR).
    * ``checkpoint_layers``: activation checkpointing of each layer (wrapped or not, with its groups
      and variants) while training (``activation_checkpoint``); the heads and the refinement are not.
    """

    def __init__(self, num_layers=6, d_model=256, num_classes=80, box_refine=True, look_forward_twice=False,
                 share_heads: Optional[bool] = None, share_layers=False, query_position="box_sine",
                 layer_wrapper: Optional[LayerWrapper] = None, initial_reference_grad: bool = False,
                 box_wh_bias: float = 0.0, output_norm: bool = False, inverse_sigmoid_eps: float = 1e-5,
                 layer_class=DeformableDecoderLayer, spatial_query: Optional[nn.Module] = None,
                 position_in_valid_region: bool = True, checkpoint_layers: bool = False, **layer_kwargs):
        super().__init__()
        if query_position not in QUERY_POSITIONS:
            raise ValueError(f"decoder.query_position={query_position!r}: expected one of {QUERY_POSITIONS}")
        if share_layers:
            shared = layer_class(d_model=d_model, **layer_kwargs)
            layers = [shared] * num_layers
        else:
            layers = [layer_class(d_model=d_model, **layer_kwargs) for _ in range(num_layers)]
            layers = [layer.specialise(index) if hasattr(layer, "specialise") else layer for index, layer in enumerate(layers)]
        if layer_wrapper is not None:
            layers = [layer_wrapper(layer, index) for index, layer in enumerate(layers)]
        self.layers = nn.ModuleList(layers)
        self.d_model, self.box_refine, self.look_forward_twice = d_model, box_refine, look_forward_twice
        self.query_position, self.share_layers = query_position, share_layers
        self.share_heads = (not box_refine) if share_heads is None else share_heads
        if query_position == "box_sine":
            self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.initial_reference_grad = initial_reference_grad
        self.spatial_query, self.position_in_valid_region = spatial_query, position_in_valid_region
        self.output_norm = nn.LayerNorm(d_model) if output_norm else None
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        self.checkpoint_layers = checkpoint_layers
        class_head, box_head = nn.Linear(d_model, num_classes), MLP(d_model, d_model, 4, 3)
        init_detection_heads(class_head, box_head)
        if self.share_heads:
            self.class_heads = nn.ModuleList([class_head] * num_layers)
            self.box_heads = nn.ModuleList([box_head] * num_layers)
        else:
            self.class_heads = nn.ModuleList(copy.deepcopy(class_head) for _ in range(num_layers))
            self.box_heads = nn.ModuleList(copy.deepcopy(box_head) for _ in range(num_layers))
        # The first layer's head only: with refinement a later layer's 0 keeps the w / h it is given.
        # A head shared by refining layers keeps 0 too: -2 there would shrink the boxes again at every layer.
        if not (self.share_heads and box_refine and num_layers > 1):
            with torch.no_grad():
                self.box_heads[0].layers[-1].bias[2:] = box_wh_bias

    # --- one layer's predictions and the next layer's state ------------------------------------
    def step(self, layer_index, hidden, stream: QueryStream, updated=None, heads=None) -> Tuple[LayerPredictions, QueryStream]:
        """The layer's predictions from its output queries, and the stream's state for the next layer.

        With box refinement, a query with ``updated`` False keeps its box: it is predicted at its input
        box and carries it on (a 2-d reference point has no box to keep: such a query is predicted by
        the head). Without refinement every query is predicted from its fixed reference anyway."""
        class_head, box_head = heads or (self.class_heads[layer_index], self.box_heads[layer_index])
        seen = hidden if self.output_norm is None else self.output_norm(hidden)
        delta = box_head(seen)
        eps = self.inverse_sigmoid_eps
        boxes = refine_boxes(delta, stream.reference_for_grad, eps)
        keep = None if updated is None or not self.box_refine or stream.reference.shape[-1] != 4 else updated[..., None]
        if keep is not None:
            boxes = torch.where(keep, boxes, stream.reference_for_grad)
        predictions = LayerPredictions(class_head(seen), boxes, hidden, stream.reference.detach(), updated=updated)
        if not self.box_refine:
            return predictions, replace(stream, query=hidden)
        # Look forward twice: the next layer's box is refined from this layer's box, whose graph reaches
        # this layer's head but starts from the detached input reference (no gradient further back).
        # With an output norm the chain reads the un-normalised output.
        refined = boxes
        if self.look_forward_twice or self.output_norm is not None:
            chain_delta = delta if self.output_norm is None else box_head(hidden)
            refined = refine_boxes(chain_delta, stream.reference if self.look_forward_twice else stream.reference_for_grad, eps)
            if keep is not None:
                refined = torch.where(keep, refined, stream.reference_for_grad)
        following = refined.detach()
        return predictions, QueryStream(hidden, following, refined if self.look_forward_twice else following, stream.position)

    def context_of(self, stream: QueryStream, state: EncoderState, self_attn_mask=None, query_padding_mask=None,
                   group_queries=None, layer_index: int = 0) -> QueryContext:
        if stream.position is not None:
            query_pos = stream.position
        elif self.query_position == "box_sine":
            if stream.reference.shape[-1] != 4:
                raise ValueError("box_sine query positions need 4-d reference boxes; give 2-d points a static position")
            # The sine input is the box in the first level's valid-region coordinates, as the sampling
            # points are (DAB-Deformable-DETR's and DINO's code): equal to the box when nothing is padded.
            box = stream.reference
            if self.position_in_valid_region:
                box = box * torch.cat([state.valid_ratios[:, 0]] * 2, -1)[:, None]
            query_pos = self.ref_point_head(box_sine_embedding(box, self.d_model // 2))
        else:
            raise ValueError("decoder.query_position='static' needs DecoderQueries.position")
        ratios = state.valid_ratios if stream.reference.shape[-1] == 2 else torch.cat([state.valid_ratios] * 2, -1)
        return QueryContext(
            query_pos=query_pos, reference_points=stream.reference[:, :, None] * ratios[:, None], memory=state.memory,
            spatial_shapes=state.spatial_shapes, level_start_index=state.level_start_index,
            memory_padding_mask=state.padding_mask, self_attn_mask=self_attn_mask, query_padding_mask=query_padding_mask,
            group_queries=group_queries, memory_pos=state.memory_pos,
            spatial_query=None if self.spatial_query is None else self.spatial_query(stream.query, stream.reference, layer_index))

    def decode_apart(self, groups: Mapping[str, QueryGroup], state: EncoderState) -> Dict[str, List[LayerPredictions]]:
        """Groups decoded without the primary queries (none, in their place) and without variants."""
        seeing = [name for name, g in groups.items() if g.sees_primary]
        if seeing:
            raise ValueError(f"groups {seeing} see the primary queries but their references are of another kind "
                             "(2-d points vs boxes): they cannot be decoded in one pass")
        if all(len(g.queries) == 0 for g in groups.values()):  # nothing to decode (an image batch without objects)
            return {name: [self.no_predictions(g.queries) for _ in self.layers] for name, g in groups.items()}
        first = next(iter(groups.values())).queries
        none = DecoderQueries(first.content[:, :0], first.reference[:, :0], None if first.position is None else first.position[:, :0])
        return self(none, state, groups=groups).groups

    def no_predictions(self, queries: DecoderQueries) -> LayerPredictions:
        """A layer's predictions for a set of no queries."""
        content = queries.content[:, :0]
        return LayerPredictions(content.new_zeros(*content.shape[:2], self.class_heads[0].out_features),
                                content.new_zeros(*content.shape[:2], 4), content, queries.reference[:, :0],
                                None if queries.valid is None else queries.valid[:, :0])

    # --- the pass --------------------------------------------------------------------------------
    def forward(self, queries: DecoderQueries, state: EncoderState, variants: Optional[Mapping[str, DecoderVariant]] = None,
                groups: Optional[Mapping[str, QueryGroup]] = None,
                variant_queries: Optional[Mapping[str, DecoderQueries]] = None) -> DecoderOutput:
        """Decodes the primary ``queries``, every query group (after them, masked from each other) and
        every variant (``VariantStreams``; ``variant_queries`` gives a variant with its own stream its
        own initial queries, as many as the primary ones). A group whose references differ in kind from
        the primary queries' (boxes beside the single-stage model's 2-d points) is decoded in a pass of
        its own, which equals the joint pass for a group that does not see the primary queries."""
        apart = {name: g for name, g in (groups or {}).items() if g.queries.reference.shape[-1] != queries.reference.shape[-1]}
        if apart:
            out = self(queries, state, variants, {n: g for n, g in groups.items() if n not in apart}, variant_queries)
            out.groups.update(self.decode_apart(apart, state))
            return out
        joint = JointQueries(queries, groups)
        streams = VariantStreams(variants, joint, variant_queries)
        primary = QueryStream.start(joint.queries)
        if self.initial_reference_grad:  # the sampling of the layers before any refinement trains the reference
            primary = replace(primary, reference=joint.queries.reference)

        def context_of(stream: QueryStream) -> QueryContext:  # of the layer ``index`` (the loop's, read at call time)
            return self.context_of(stream, state, joint.mask, joint.padding, joint.group_queries, index)

        layers = []
        for index, layer in enumerate(self.layers):
            inputs = LayerInputs({PRIMARY: Stream(primary.query, context_of(primary)), **streams.streams(context_of)},
                                 streams.layer_variants(index))
            result = call_layer(layer, self.checkpoint_layers, inputs)
            if set(result.variants) != set(inputs.variants):
                raise ValueError(f"decoder layer {index} ({type(layer).__name__}) returned outputs for variants "
                                 f"{sorted(result.variants)}, was given {sorted(inputs.variants)}: a layer returns one per variant")
            predictions, following = self.step(index, result.hidden, primary, result.updated)
            predictions.valid, predictions.extras = joint.queries.valid, dict(result.extras)
            for name, states in result.predict.items():
                heads = (states.class_head, states.box_head) if isinstance(states, PredictWith) else None
                states = states.states if isinstance(states, PredictWith) else states
                predictions.extras[name], _ = self.step(index, states, primary, heads=heads)
                predictions.extras[name].valid = joint.queries.valid
            layers.append(predictions)
            streams.advance(index, result, primary, self.step)
            primary = following
        return joint.split(layers, streams.predictions)
