"""The contracts of the shared core: read this module first.

A method changes the model through five extension points, each a slot of ``DeformableDETR`` (or of
its decoder) that takes modules of the method's own; none of them exists at inference unless it is
part of the model (a layer wrapper, a head):

================  ====================================  ======================================
extension point   the slot                              what it receives / returns
================  ====================================  ======================================
decoder variant   ``model.variants = {name: variant}``  per layer a ``LayerVariant`` (other
                  (``DecoderVariant``)                  blocks for the same queries), a criterion
group source      ``model.group_sources = {name: src}`` ``TrainingBatch`` -> ``{key: QueryGroup}``
                  (``GroupSource``)                     (other queries through the same blocks)
layer wrapper     ``decoder.layer_wrapper(layer, i)``   ``LayerInputs`` -> ``LayerOutput``
                  (``LayerWrapper``)                    (which queries a layer processes)
criterion         ``model.criterion``, a variant's,     ``Criterion`` call: predictions ->
                  a group's, ``extra_output_criteria``  (losses, indices); ``LossContext``
head              ``model.heads = {name: head}``        per-query outputs of a layer's
                  (``Head``)                            predictions and their losses
================  ====================================  ======================================

plus a teacher: a criterion (the model's, the encoder's, a variant's, an extra output's), a group
source or a head with ``requires_teacher = True`` makes the trainer attach the EMA model, whose
``DetectionPass`` of the batch is ``TrainingBatch.teacher``.

Loss keys are part of the contract. ``{prefix}{term}{suffix}``: the prefix is "" for the primary
queries and ``{name}/`` for a variant, group or extra output (a head's losses take the prefix of the
predictions it runs on: ``loss_iou``, ``route1/loss_iou_0``); the suffix ``_{i}`` names decoder
layer i ("" for the last primary layer, ``_enc`` for the encoder). The same keys come out of every
training step, whatever the batch (detectron2 averages metrics across processes by the first
process's keys): a group source returns the same group names every step, a group with no queries
where nothing is to be supervised, and its losses are then zero.

The wire types below are plain dataclasses: what flows between the stages.
"""
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

import torch
from torch import nn

from .gather import QuerySubset

if TYPE_CHECKING:  # the transformer module imports this one
    from .transformer import DeformableTransformer

Indices = List[Tuple[torch.Tensor, torch.Tensor]]  # per image (query indices, GT indices), sorted by query
Targets = List[Dict[str, torch.Tensor]]  # per image {"labels": (n,), "boxes": (n, 4) normalized cxcywh}


# --- encoder and queries --------------------------------------------------------------------------
@dataclass
class EncoderState:
    memory: torch.Tensor  # (B, S, d)
    spatial_shapes: torch.Tensor  # (L, 2)
    level_start_index: torch.Tensor  # (L,)
    valid_ratios: torch.Tensor  # (B, L, 2) (w, h) fraction of each level that is not padding
    padding_mask: torch.Tensor  # (B, S) True on padding
    backbone_features: Optional[Dict[str, torch.Tensor]] = None  # the backbone's outputs by name (res3, ...), for heads
    memory_pos: Optional[torch.Tensor] = None  # (B, S, d) the memory's position embedding (keys of standard cross-attention)


@dataclass
class DecoderQueries:
    """The initial state of queries a decoder pass starts from.

    * ``content`` (B, N, d): the content queries;
    * ``reference`` (B, N, 4) normalized (cx, cy, w, h) boxes, or (B, N, 2) points (the published
      single-stage Deformable DETR's reference points, Zhu et al. Sec. 4.1);
    * ``position`` (B, N, d) or None: a static positional part that stays fixed through the decoder
      (published Deformable DETR); None: positions are computed from each layer's reference boxes
      (sine embedding + MLP, as DAB-DETR / DINO);
    * ``valid`` (B, N) bool or None: False on padding (groups whose size varies per image). Padded
      queries are never attended to, matched or supervised.
    """

    content: torch.Tensor
    reference: torch.Tensor
    position: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.content.shape[1]

    def valid_mask(self) -> torch.Tensor:
        if self.valid is not None:
            return self.valid
        return torch.ones(self.content.shape[:2], dtype=torch.bool, device=self.content.device)

    @staticmethod
    def concat(parts: Sequence["DecoderQueries"]) -> "DecoderQueries":
        """The queries of ``parts`` one after the other along dim 1 (all static positions or none)."""
        has_position = {p.position is not None for p in parts}
        if len(has_position) > 1:
            raise ValueError("cannot decode queries with a static position beside queries without one")
        dims = {p.reference.shape[-1] for p in parts}
        if len(dims) > 1:
            raise ValueError(f"cannot decode reference points and boxes in one pass (last dims {sorted(dims)})")
        any_padding = any(p.valid is not None for p in parts)
        return DecoderQueries(
            content=torch.cat([p.content for p in parts], 1),
            reference=torch.cat([p.reference for p in parts], 1),
            position=torch.cat([p.position for p in parts], 1) if has_position == {True} else None,
            valid=torch.cat([p.valid_mask() for p in parts], 1) if any_padding else None,
        )


@dataclass
class QuerySelection:
    """The primary queries and what the encoder loss reads."""

    queries: DecoderQueries
    # Two-stage only: the encoder's class logits / boxes (and validity) over the tokens its loss
    # covers (the top-k, or every token), and the encoder positions of the selected proposals.
    encoder_predictions: Optional[Dict[str, torch.Tensor]] = None
    topk_indices: Optional[torch.Tensor] = None  # (B, Q)


# --- inside a decoder layer -----------------------------------------------------------------------
@dataclass
class QueryContext:
    """What a decoder layer's blocks read besides the queries.

    Per-query fields (``PER_QUERY``) are indexed along dim 1 together with the queries, so a wrapper
    that decodes a subset of queries calls ``context.select(subset)``; the rest is shared.
    ``self_attn_mask`` is (Q, Q), or (B, Q, Q) when it differs per image, True where a query may not
    attend; ``query_padding_mask`` (B, Q) is True on padded queries, which no query attends to;
    ``group_queries`` (B, Q) is True on the queries of a query group (decoded beside the primary ones,
    None without groups), for a block that treats them apart (Mr. DETR's instruction tokens).
    """

    query_pos: torch.Tensor  # (B, Q, d)
    reference_points: torch.Tensor  # (B, Q, L, 4) boxes (or (B, Q, L, 2) points) scaled by valid ratios
    memory: torch.Tensor  # (B, S, d)
    spatial_shapes: torch.Tensor
    level_start_index: torch.Tensor
    memory_padding_mask: Optional[torch.Tensor] = None  # (B, S), True on padding
    self_attn_mask: Optional[torch.Tensor] = None  # (Q, Q) or (B, Q, Q) bool, True = may not attend
    query_padding_mask: Optional[torch.Tensor] = None  # (B, Q) bool, True on padded queries
    group_queries: Optional[torch.Tensor] = None  # (B, Q) bool, True on the queries of a query group
    memory_pos: Optional[torch.Tensor] = None  # (B, S, d) position embedding of the memory (standard cross-attention)
    spatial_query: Optional[torch.Tensor] = None  # (B, Q, d) Conditional DETR's spatial query (ConditionalSpatialQuery)

    PER_QUERY = ("query_pos", "reference_points", "spatial_query")  # None where a decoder has no such field

    def select(self, subset: Union[QuerySubset, torch.Tensor]) -> "QueryContext":
        """Context for the queries of ``subset`` (a ``QuerySubset``, or a (B, K) index of distinct
        positions per image): per-query fields, the self-attention mask's rows and columns and the
        padding mask are gathered; padded slots of the subset become padded queries."""
        if isinstance(subset, torch.Tensor):
            subset = QuerySubset(subset, torch.ones(subset.shape, dtype=torch.bool, device=subset.device))
        picked = {name: subset.gather(getattr(self, name)) for name in self.PER_QUERY if getattr(self, name) is not None}
        if self.self_attn_mask is not None:
            mask = self.self_attn_mask
            if mask.dim() == 2:
                mask = mask.expand(subset.index.shape[0], -1, -1)
            rows = subset.gather(mask)  # (B, K, Q)
            picked["self_attn_mask"] = rows.gather(2, subset.index[:, None, :].expand(-1, subset.size, -1))
        padding = ~subset.valid if subset.padded else None
        if self.query_padding_mask is not None:
            inherited = subset.gather(self.query_padding_mask)
            padding = inherited if padding is None else padding | inherited
        picked["query_padding_mask"] = padding
        if self.group_queries is not None:
            picked["group_queries"] = subset.gather(self.group_queries)
        return replace(self, **picked)

    @staticmethod
    def concat(contexts: Sequence["QueryContext"]) -> "QueryContext":
        """Context for the queries of ``contexts`` concatenated along dim 1 (same memory, e.g. several
        streams in one cross-attention call); it has no self-attention or query padding mask (they
        relate queries of one stream only, as the group marks do)."""
        first = contexts[0]
        joined = {name: torch.cat([getattr(c, name) for c in contexts], 1) for name in first.PER_QUERY if getattr(first, name) is not None}
        return replace(first, self_attn_mask=None, query_padding_mask=None, group_queries=None, **joined)

    def attention_mask(self, num_heads: int) -> Optional[torch.Tensor]:
        """The mask ``nn.MultiheadAttention`` takes: ``self_attn_mask`` as is when it is (Q, Q) and
        nothing is padded; otherwise (B * heads, Q, Q) with padded keys blocked. A padded query may
        attend to itself, so no row is blocked entirely (a fully blocked row gives NaN, and NaN values
        poison every query through the attention product even with weight 0)."""
        mask, padding = self.self_attn_mask, self.query_padding_mask
        if padding is None and (mask is None or mask.dim() == 2):
            return mask
        if padding is not None:
            batch, num = padding.shape
            blocked = padding[:, None, :].expand(batch, num, num)
            blocked = blocked if mask is None else blocked | mask
            positions = torch.arange(num, device=padding.device)  # the identity, as onnxruntime runs it (no bool EyeLike)
            own = (positions[:, None] == positions[None]) & padding[:, :, None]
            mask = blocked & ~own
        return mask.repeat_interleave(num_heads, 0)


PRIMARY = "primary"  # the stream of the primary queries (and every query group decoded with them)


@dataclass
class Stream:
    """One stream of queries through a decoder layer: its queries (B, Q, d) and their context."""

    query: torch.Tensor
    context: QueryContext


@dataclass
class LayerInputs:
    """What every decoder layer, and every wrapper around one, is called with.

    ``streams`` always holds ``PRIMARY``; a variant that carries its own queries from layer to layer
    (``DecoderVariant.own_stream``) has a stream under its own name. ``variants`` maps each variant
    that has a block variant in this layer to its ``LayerVariant``; the variant reads the stream of
    its own name if there is one, else the primary stream (``stream_of``)."""

    streams: Dict[str, Stream]
    variants: Dict[str, "LayerVariant"] = field(default_factory=dict)

    @property
    def primary(self) -> Stream:
        return self.streams[PRIMARY]

    def stream_of(self, variant_name: str) -> str:
        return variant_name if variant_name in self.streams else PRIMARY


@dataclass
class LayerOutput:
    """What a decoder layer (or a wrapper around one) returns.

    * ``hidden`` (B, Q, d): the primary stream's output queries;
    * ``variants``: per variant of ``LayerInputs.variants``, its output queries (B, Q, d);
    * ``updated`` (B, Q) bool or None: False for a query that bypassed the whole layer; it keeps its
      reference box instead of being refined by this layer's head (QR-DETR's EEQR_F);
      ``variant_updated``: the same per variant;
    * ``extras``: further per-layer outputs (routing statistics, say); a ``LayerPredictions`` under a
      name the meta-architecture has a criterion for is supervised;
    * ``predict``: further query states (B, Q, d) that the decoder turns into ``LayerPredictions``
      with this layer's heads and reference boxes, into ``extras`` under the same name (QR-DETR's
      exit heads); a ``PredictWith`` uses other heads.
    """

    hidden: torch.Tensor
    variants: Dict[str, torch.Tensor] = field(default_factory=dict)
    updated: Optional[torch.Tensor] = None
    variant_updated: Dict[str, torch.Tensor] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)
    predict: Dict[str, Union[torch.Tensor, "PredictWith"]] = field(default_factory=dict)


@dataclass
class PredictWith:
    """Query states to predict with heads of their own (``LayerOutput.predict``)."""

    states: torch.Tensor
    class_head: nn.Module
    box_head: nn.Module


@dataclass
class QueryStream:
    """One stream's decoder state between layers."""

    query: torch.Tensor  # (B, Q, d)
    reference: torch.Tensor  # (B, Q, 4) detached reference boxes (or (B, Q, 2) points)
    reference_for_grad: torch.Tensor  # the same values; under look-forward-twice with the previous layer's refinement graph
    position: Optional[torch.Tensor] = None  # (B, Q, d) static positional part, or None: from the boxes

    @staticmethod
    def start(queries: DecoderQueries) -> "QueryStream":
        return QueryStream(queries.content, queries.reference.detach(), queries.reference, queries.position)


# --- predictions ----------------------------------------------------------------------------------
@dataclass
class LayerPredictions:
    """One decoder layer's predictions for one set of queries: the criterion's input."""

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
    layers: List[LayerPredictions]  # the primary queries, one per decoder layer
    variants: Dict[str, List[Optional[LayerPredictions]]] = field(default_factory=dict)  # None: no variant in that layer
    groups: Dict[str, List[LayerPredictions]] = field(default_factory=dict)  # query groups, one per layer
    # variant -> group -> the variant's predictions for that group's queries (None where it has no layer variant)
    variant_groups: Dict[str, Dict[str, List[Optional[LayerPredictions]]]] = field(default_factory=dict)


@dataclass
class QueryGroup:
    """One training step's extra queries, decoded beside the primary ones (``GroupSource``).

    ``criterion`` is called like ``SetCriterion``; ``indices`` (per image ``(query, gt)``, query
    indices within the group) fixes the assignment of every layer; ``sees_primary`` lets the group
    read the primary queries (DINO's denoising groups); ``self_attn_mask`` (N, N) bool, True where
    a query of the group may not attend another of the group (several denoising groups packed into
    one, their number changing with the batch: the loss keys stay the same); ``loss_scale``
    multiplies the group's losses; ``extras`` carries what the criterion needs besides the predictions (e.g. a teacher's
    outputs for the same queries). A group may have no queries (its losses are then zero)."""

    queries: DecoderQueries
    criterion: "Criterion"
    indices: Optional[Indices] = None
    sees_primary: bool = False
    loss_scale: float = 1.0
    self_attn_mask: Optional[torch.Tensor] = None
    extras: Dict[str, Any] = field(default_factory=dict)


# --- a training step ------------------------------------------------------------------------------
@dataclass
class DetectionPass:
    """One pass of the primary queries with what each stage computed (an EMA teacher's forward, and
    what matching-stability metrics read): per-layer queries, boxes and logits in ``decoder``, the
    initial queries and (two-stage) top-k proposal indices in ``selection``, and per decoder layer the
    Hungarian assignment to ``targets`` (when the inputs have instances)."""

    image_sizes: List[Tuple[int, int]]
    targets: Optional[Targets]
    state: EncoderState
    selection: QuerySelection
    decoder: DecoderOutput
    matching: Optional[List[Indices]] = None


@dataclass
class TrainingBatch:
    """What group sources, criteria and heads may read in a training step (``LossContext.batch``).
    Complete before any group source is called."""

    inputs: List[Dict]
    targets: Targets
    image_sizes: List[Tuple[int, int]]
    state: EncoderState
    selection: QuerySelection
    teacher: Optional[DetectionPass] = None
    num_boxes: float = 1.0
    transformer: Optional["DeformableTransformer"] = None  # the student's (``queries_at`` builds new queries)
    variant_selections: Dict[str, QuerySelection] = field(default_factory=dict)  # variants with their own query selection


@dataclass
class LossContext:
    """What the meta-architecture tells a criterion besides the predictions: which decoder layer (or
    "enc"), which variant or group (``name``; "primary" for the primary queries), the ``QueryGroup``
    if any, and the training batch. ``matching``: the assignments computed so far in this step, by
    name ("primary", "enc", variant, group and extra-output names), entry i for decoder layer i (None
    where that name has no predictions in layer i); the primary queries' come
    first in every layer, so a variant's criterion can read its layer's one-to-one pairs."""

    layer: Union[int, str]
    name: str = ""
    batch: Optional[TrainingBatch] = None
    group: Optional[QueryGroup] = None
    matching: Optional[Dict[str, List[Indices]]] = None


# --- the extension points' protocols ----------------------------------------------------------------


class Criterion(Protocol):
    """``criterion(logits, boxes, targets, num_boxes, indices=None, valid=None, context=None)`` ->
    ``(weighted losses {"loss_class": ..., ...}, indices)``: the same keys every call; ``indices`` the
    pairs it supervised (given ones are used as they are); padded queries (``valid`` False) are never
    matched or supervised. ``SetCriterion`` is the core's; a method may wrap one."""

    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, targets: Targets, num_boxes: float,
                 indices: Optional[Indices] = None, valid: Optional[torch.Tensor] = None,
                 context: Optional[LossContext] = None) -> Tuple[Dict[str, torch.Tensor], Indices]: ...


class ClassLoss(Protocol):
    """The class loss a ``SetCriterion`` is given (``FocalLoss``, ``VarifocalPlusLoss``,
    ``QualityFocalLoss``): ``loss(logits, onehot, quality)`` -> elementwise (B, Q, C) loss; when
    ``needs_quality``, ``quality`` holds each positive's soft target at its class entry, made by
    ``positive_quality(matched_logits, matched_boxes, gt_boxes)``, and zeros elsewhere."""

    needs_quality: bool

    def __call__(self, logits: torch.Tensor, onehot: torch.Tensor, quality: Optional[torch.Tensor]) -> torch.Tensor: ...


class LayerVariant(nn.Module):
    """One variant's blocks in one decoder layer (a ``DecoderVariant`` has one per layer).

    The base class replaces nothing: its output is the layer's primary output. A subclass sets
    ``replaces_self_attention``, ``replaces_cross_attention`` and / or ``replaces_ffn`` and overrides
    the matching method; each receives the layer's shared block so it can reuse its weights."""

    replaces_self_attention = False
    replaces_cross_attention = False
    replaces_ffn = False

    def self_attention(self, query: torch.Tensor, context: QueryContext, shared: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def cross_attention(self, query: torch.Tensor, context: QueryContext, shared: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def feed_forward(self, query: torch.Tensor, context: QueryContext, shared: nn.Module) -> torch.Tensor:
        raise NotImplementedError


@runtime_checkable
class DecoderVariant(Protocol):
    """A training-only variant of the decoder (``model.variants``): per layer a ``LayerVariant`` or
    None (``layer_variant(i)``), the ``criterion`` its predictions are trained with, ``loss_scale``;
    ``own_stream``: it carries its own queries and boxes from layer to layer (a full pass of the
    weight-shared decoder) instead of branching from the primary state in every layer;
    ``detach_reference``: its boxes are refined from a detached reference; ``query_selection``: its
    own top-k proposals (two-stage, own stream); ``group_losses``: names of query groups whose
    queries the variant's pass also decodes and trains with the group's own criterion (DINO's
    denoising queries in Mr. DETR's routes). ``TrainingVariant`` is the core's."""

    criterion: Criterion
    loss_scale: float
    own_stream: bool
    detach_reference: bool
    query_selection: Optional[nn.Module]
    group_losses: Sequence[str]

    def layer_variant(self, layer_index: int) -> Optional[LayerVariant]: ...


class GroupSource(Protocol):
    """``source(batch: TrainingBatch) -> {key: QueryGroup}`` (``model.group_sources``), called once per
    training step after the encoder, the query selection and the teacher's pass. It returns the same
    keys every step (a group with no queries where nothing is to be supervised); groups are named
    ``{source}_{key}``, or ``{source}`` for the key "". ``requires_teacher = True`` asks for the EMA
    teacher."""

    def __call__(self, batch: TrainingBatch) -> Mapping[str, QueryGroup]: ...


class DecoderLayer(Protocol):
    """A decoder layer, or what a ``decoder.layer_wrapper(layer, index)`` returns in its place:
    called with ``LayerInputs``, returns a ``LayerOutput`` with one output per variant of the inputs.
    A core layer declares its blocks in order (``blocks_for(variant)``: ``[(name, block)]``, each
    ``block(query, context) -> query``, the variant's blocks swapped in) so a wrapper composes them
    instead of rebuilding the layer. The decoder checks that every variant got an output."""

    def __call__(self, inputs: LayerInputs) -> LayerOutput: ...


class LayerWrapper(Protocol):
    """``decoder.layer_wrapper``: called once per layer at construction with the core layer and its
    index; returns the module used as that layer."""

    def __call__(self, layer: nn.Module, index: int) -> DecoderLayer: ...


@runtime_checkable
class Head(Protocol):
    """A per-query output (``model.heads``): an IoU head, a mask head. ``layers``: "all" or "last"
    (which decoder layers it runs on); ``forward(predictions, state)`` -> (B, Q, ...) outputs (``state``:
the ``EncoderState``, with the backbone's features);
    ``loss(outputs, predictions, targets, indices, num_boxes)`` -> weighted losses (the same keys
    every call) for the pairs the layer's criterion matched. At inference the last layer's outputs of
    the kept queries become the ``Instances`` field ``field``; a head may also have
    ``finish(instances, image_size, padded_size) -> instances``, called on each image's detections at
    the original size (the mask head turns its logits into ``pred_masks`` there), and
    ``matched_loss(predictions, state, targets, indices, num_boxes)``, which the loss book then calls
    instead of ``loss(self(predictions, state), ...)``: the same losses from the matched queries'
    outputs only (the mask head decodes a mask for each matched query, not for every query), and
    ``select(predictions, state, image, query) -> (N, ...)``, which inference then calls for the kept
    queries instead of ``self(predictions, state)`` for all."""

    layers: str
    field: str

    def __call__(self, predictions: LayerPredictions, state: EncoderState) -> torch.Tensor: ...

    def loss(self, outputs: torch.Tensor, predictions: LayerPredictions, targets: Targets, indices: Indices,
             num_boxes: float) -> Dict[str, torch.Tensor]: ...
