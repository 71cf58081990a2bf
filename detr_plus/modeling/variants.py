"""Decoder variants: extra ways to supervise the shared decoder that exist only in training.

A ``TrainingVariant`` gives each decoder layer an optional ``LayerVariant`` (the blocks it replaces
for its queries) and owns the criterion its predictions are trained with (``DecoderVariant`` in
``contracts``). ``VariantStreams`` carries every variant's state through one decoder pass. The
meta-architecture runs variants only in training; ``strip_training_parts`` turns a method's
checkpoint into a plain baseline checkpoint.
"""
import re
from dataclasses import replace
from typing import Callable, Dict, Mapping, Optional, Sequence

from torch import nn

from ..layers import MLP
from .blocks import FFN, CrossAttentionBlock, FFNBlock, SelfAttentionBlock
from .contracts import (DecoderQueries, DecoderVariant, EncoderState, LayerOutput, LayerVariant, QueryContext,
                        QuerySelection, QueryStream, Stream)
from .groups import JointQueries
from .heads import init_detection_heads, xavier_matrices

TRAINING_ONLY_PREFIXES = ("variants.", "group_sources.", "extra_output_criteria.")
# A method's training-only modules that must sit inside an inference module (e.g. per-layer heads of
# a layer wrapper) go in a child of this name: ``is_training_only`` drops them wherever they are.
TRAINING_ONLY_CHILD = "training_only"
# Checkpoints written before the core v3 names (issue #25): old prefix -> new prefix; a route's
# per-layer "branches" are a variant's "layer_variants".
LEGACY_PREFIXES = {"routes.": "variants.", "query_groups.": "group_sources."}
LEGACY_BRANCHES = re.compile(r"^routes\.([^.]+)\.branches\.")


class TrainingVariant(nn.Module):
    """``layer_variants``: one ``LayerVariant`` (or None to skip that layer) per decoder layer.
    ``loss_scale`` multiplies every loss of the variant (e.g. 1/N for N LoRA-DETR branches).
    ``own_stream``: the variant's output of a layer (queries and refined boxes) is its input to the
    next layer, i.e. a full pass through the weight-shared decoder (Mr. DETR's routes); otherwise
    every layer's variant reads the primary state and only the primary output goes on (LoRA-DETR's
    branches).
    ``detach_reference``: the variant's boxes are refined from its input reference without the
    look-forward-twice graph, so its box losses send no gradient into the previous layer's
    refinement (LoRA-DETR's public code refines its branches from the primary queries' detached
    reference).
    ``query_selection``: a ``VariantQuerySelection`` (two-stage models, ``own_stream`` variants): the
    variant starts from its own top-k encoder proposals instead of the primary queries, and its
    selection gets an encoder loss of its own (``{name}/loss_*_enc``).
    ``group_losses``: names of query groups (as their loss keys name them, e.g. "dn") whose queries,
    as this variant decodes them, are trained with the group's own criterion and assignment too
    (``{name}/{group}/loss_*``, x the variant's and the group's loss scales): the denoising losses
    of every route in Mr. DETR's DINO code. Without it the variant's group part is not supervised."""

    def __init__(self, layer_variants: Sequence[Optional[LayerVariant]], criterion: nn.Module, loss_scale: float = 1.0,
                 own_stream: bool = False, detach_reference: bool = False, query_selection: Optional[nn.Module] = None,
                 group_losses: Sequence[str] = ()):
        super().__init__()
        if query_selection is not None and not own_stream:
            raise ValueError("a variant with its own query_selection must carry its own stream (own_stream=True)")
        if own_stream and any(v is None for v in layer_variants):
            raise ValueError("a variant with own_stream=True needs a LayerVariant in every decoder layer (LayerVariant() shares all)")
        self.query_selection = query_selection
        self.own_stream, self.detach_reference = own_stream, detach_reference
        self.layer_variants = nn.ModuleList(v if v is not None else nn.Identity() for v in layer_variants)
        self.criterion = criterion
        self.loss_scale = loss_scale
        self.group_losses = tuple(group_losses)

    def layer_variant(self, layer_index: int) -> Optional[LayerVariant]:
        if layer_index >= len(self.layer_variants):
            return None
        variant = self.layer_variants[layer_index]
        return variant if isinstance(variant, LayerVariant) else None


class OwnFFNVariant(LayerVariant):
    """A layer variant with its own FFN weights (both linears) inside the layer's shared residual and
    norm: Mr. DETR's Route-1 (a variant with its own stream) and LoRA-DETR's "naive" multi-FFN
    architecture (Fig. 1(c), reading the primary queries' post-cross-attention state)."""

    replaces_ffn = True

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, xavier_init=True):
        """``xavier_init``: the init of the FFN it stands beside (the transformer's), not PyTorch's
        default (which starts the weights about half as large)."""
        super().__init__()
        self.ffn = FFN(d_model, d_ffn, dropout)
        if xavier_init:
            xavier_matrices(self.ffn)

    def feed_forward(self, query, context: QueryContext, shared: FFNBlock):
        return shared(query, context, ffn=self.ffn)


class OwnBlocksVariant(LayerVariant):
    """A layer variant with its own complete copy of the blocks named in ``own`` ("self_attn",
    "cross_attn", "ffn": each with its residual, dropout and norm, started as the layer's are:
    xavier matrices, the deformable attention's own init), the other blocks the layer's (Mr. DETR's
    route ablation, rows 3-12: a route with an independent self-attention, cross-attention and / or
    FFN)."""

    BLOCKS = ("self_attn", "cross_attn", "ffn")

    def __init__(self, own: Sequence[str] = ("ffn",), d_model=256, d_ffn=1024, dropout=0.0, num_heads=8, num_levels=4,
                 num_points=4):
        super().__init__()
        unknown = [name for name in own if name not in self.BLOCKS]
        if unknown or not own:
            raise ValueError(f"OwnBlocksVariant(own={list(own)}): expected one or more of {self.BLOCKS}")
        make = {"self_attn": lambda: SelfAttentionBlock(d_model, num_heads, dropout),
                "cross_attn": lambda: CrossAttentionBlock(d_model, num_heads, num_levels, num_points, dropout),
                "ffn": lambda: FFNBlock(d_model, d_ffn, dropout)}
        self.own = nn.ModuleDict({name: make[name]() for name in self.BLOCKS if name in own})
        for name in ("self_attn", "ffn"):
            if name in self.own:
                xavier_matrices(self.own[name])
        self.replaces_self_attention = "self_attn" in self.own
        self.replaces_cross_attention = "cross_attn" in self.own
        self.replaces_ffn = "ffn" in self.own

    def self_attention(self, query, context: QueryContext, shared):
        return self.own["self_attn"](query, context)

    def cross_attention(self, query, context: QueryContext, shared):
        return self.own["cross_attn"](query, context)

    def feed_forward(self, query, context: QueryContext, shared):
        return self.own["ffn"](query, context)


class VariantQuerySelection(nn.Module):
    """A variant's own two-stage query selection: its own encoder class and box heads score and
    regress the shared encoder output, and its top-k proposals give the variant its own reference
    boxes (and, in static-position models, positions); the learned content queries are the primary
    ones (Mr. DETR's Route-3 in the authors' code, docs/authors_code_facts.md#mr-detr).
    ``num_classes``: 1 for a class-agnostic proposal head, like the transformer's
    ``enc_class_agnostic``. ``xavier_init``: the heads' matrices start xavier-uniform (the authors'
    Mr. DETR code re-initialises every matrix so), the box head's last layer still zero (a proposal
    starts at its anchor) and the class bias at the focal prior."""

    def __init__(self, d_model: int, num_classes: int, xavier_init: bool = False):
        super().__init__()
        self.class_head = nn.Linear(d_model, num_classes)
        self.box_head = MLP(d_model, d_model, 4, 3)
        if xavier_init:
            xavier_matrices(self.class_head, self.box_head)
        init_detection_heads(self.class_head, self.box_head)

    def forward(self, transformer, state: EncoderState) -> QuerySelection:
        """``transformer``: the model's ``DeformableTransformer``."""
        if not transformer.two_stage:
            raise ValueError("VariantQuerySelection needs a two-stage transformer (query_init 'proposals' or 'mixed')")
        if self.class_head.out_features != transformer.enc_class_head.out_features:
            raise ValueError(f"VariantQuerySelection has {self.class_head.out_features} proposal classes, "
                             f"the transformer's proposal head {transformer.enc_class_head.out_features}")
        return transformer.select_queries(state, heads=(self.class_head, self.box_head))


class VariantStreams:
    """Every variant's state through one decoder pass, and its per-layer predictions.

    A variant without its own stream branches from the primary state in every layer. A variant with
    ``own_stream`` reads the primary stream until its first layer has run (or starts from its own
    ``starts[name]`` queries: its own query selection), then its own queries and boxes; it carries
    the query groups' queries too (masked as in the primary pass) and its predictions keep only
    the primary queries' part."""

    def __init__(self, variants: Optional[Mapping[str, DecoderVariant]], joint: JointQueries,
                 starts: Optional[Mapping[str, DecoderQueries]] = None):
        self.variants = dict(variants or {})
        self.states: Dict[str, QueryStream] = {}
        for name, start in (starts or {}).items():
            if name not in self.variants or not self.variants[name].own_stream:
                raise ValueError(f"variant_queries[{name!r}]: only a decoded variant with own_stream=True starts from its own queries")
            if len(start) != joint.sizes[0]:
                raise ValueError(f"variant_queries[{name!r}] has {len(start)} queries, the primary ones {joint.sizes[0]}")
            self.states[name] = QueryStream.start(joint.with_groups(start))
        self.predictions: Dict[str, list] = {name: [] for name in self.variants}

    def layer_variants(self, index: int) -> Dict[str, LayerVariant]:
        chosen = {name: variant.layer_variant(index) for name, variant in self.variants.items()}
        return {name: v for name, v in chosen.items() if v is not None}

    def streams(self, context_of: Callable[[QueryStream], QueryContext]) -> Dict[str, Stream]:
        return {name: Stream(state.query, context_of(state)) for name, state in self.states.items()}

    def advance(self, index: int, result: LayerOutput, primary: QueryStream, step) -> None:
        """Record layer ``index``'s predictions of every variant (None where it has no layer variant)
        and move the own streams on; ``step`` is the decoder's (predictions, next state) function."""
        for name, variant in self.variants.items():
            hidden = result.variants.get(name)
            if hidden is None:
                self.predictions[name].append(None)
                continue
            source = self.states.get(name, primary)
            if variant.detach_reference:
                source = replace(source, reference_for_grad=source.reference)
            predictions, following = step(index, hidden, source, result.variant_updated.get(name))
            if variant.own_stream:
                self.states[name] = following
            self.predictions[name].append(predictions)


def is_training_only(key: str) -> bool:
    """Whether state-dict ``key`` is a training-only tensor: under ``variants.*``, ``group_sources.*``,
    ``extra_output_criteria.*`` (or their older names), or under a ``training_only`` child anywhere."""
    return key.startswith(TRAINING_ONLY_PREFIXES + tuple(LEGACY_PREFIXES)) or TRAINING_ONLY_CHILD in key.split(".")


def strip_training_parts(state_dict: Dict) -> Dict:
    """Drop every training-only tensor (``is_training_only``) so the state dict loads into the
    inference model (the baseline, or a method's inference model such as QR-DETR's routed decoder)."""
    return {k: v for k, v in state_dict.items() if not is_training_only(k)}


def rename_legacy_keys(state_dict: Dict) -> Dict:
    """A state dict with the parameter names of core v3 (``routes.*`` -> ``variants.*``,
    ``query_groups.*`` -> ``group_sources.*``); other keys as they are."""
    renamed = {}
    for key, value in state_dict.items():
        key = LEGACY_BRANCHES.sub(r"routes.\1.layer_variants.", key)
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed
