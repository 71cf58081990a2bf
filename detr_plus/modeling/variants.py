"""Training routes: extra ways to supervise the shared decoder that exist only in training (DESIGN.md).

A ``TrainingRoute`` gives each decoder layer an optional ``LayerBranch`` (its per-layer module
variants) and owns the criterion (matcher + losses + weights) its predictions are trained with.
The meta-architecture runs routes only in training; at inference only the primary route exists,
and ``strip_training_routes`` turns a method's checkpoint into a plain baseline checkpoint.
"""
from typing import Dict, Optional, Sequence

from torch import nn

from ..layers import MLP
from .criterion import SetCriterion
from .decoder import LayerBranch
from .structures import EncoderState
from .transformer import DeformableTransformer, QuerySelection, init_proposal_heads

ROUTES_PREFIX = "routes."
TRAINING_ONLY_PREFIXES = (ROUTES_PREFIX, "query_groups.", "extra_output_criteria.")


class TrainingRoute(nn.Module):
    """``branches``: one ``LayerBranch`` (or None to skip that layer) per decoder layer.
    ``loss_scale`` multiplies every loss of the route (e.g. 1/N for N LoRA-DETR branches).
    ``own_stream``: the route's output of a layer (queries and refined boxes) is its input to the
    next layer, i.e. a full pass through the weight-shared decoder (Mr. DETR's routes); otherwise
    every layer's branch reads the primary route's state and only the primary output goes on
    (LoRA-DETR's branches).
    ``detach_reference``: the route's boxes are refined from its input reference without the
    look-forward-twice graph, so its box losses send no gradient into the previous layer's
    refinement (LoRA-DETR's public code refines the o2m branches from the primary route's detached
    reference).
    ``query_selection``: a ``RouteQuerySelection`` (two-stage models, ``own_stream`` routes): the
    route starts from its own top-k encoder proposals instead of the primary queries, and its
    selection gets an encoder loss of its own (``{name}/loss_*_enc``)."""

    def __init__(self, branches: Sequence[Optional[LayerBranch]], criterion: SetCriterion, loss_scale: float = 1.0,
                 own_stream: bool = False, detach_reference: bool = False, query_selection: Optional[nn.Module] = None):
        super().__init__()
        if query_selection is not None and not own_stream:
            raise ValueError("a route with its own query_selection must carry its own stream (own_stream=True)")
        self.query_selection = query_selection
        if own_stream and any(b is None for b in branches):
            raise ValueError("a route with own_stream=True needs a branch in every decoder layer (LayerBranch() shares all)")
        self.own_stream, self.detach_reference = own_stream, detach_reference
        self.branches = nn.ModuleList(b if b is not None else nn.Identity() for b in branches)
        self.criterion = criterion
        self.loss_scale = loss_scale

    def layer_branch(self, layer_index: int) -> Optional[LayerBranch]:
        if layer_index >= len(self.branches):
            return None
        branch = self.branches[layer_index]
        return branch if isinstance(branch, LayerBranch) else None


class RouteQuerySelection(nn.Module):
    """A route's own two-stage query selection: its own encoder class and box heads score and regress
    the shared encoder output, and its top-k proposals give the route its own reference boxes (and,
    in static-position models, positions); the learned content queries are the primary ones
    (Mr. DETR's Route-3, papers/README.md "Route-3 has its OWN query selection"). ``num_classes``:
    1 for a class-agnostic proposal head, like the transformer's ``enc_class_agnostic``."""

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.class_head = nn.Linear(d_model, num_classes)
        self.box_head = MLP(d_model, d_model, 4, 3)
        init_proposal_heads(self.class_head, self.box_head)

    def forward(self, transformer: DeformableTransformer, state: EncoderState) -> QuerySelection:
        if not transformer.two_stage:
            raise ValueError("RouteQuerySelection needs a two-stage transformer (query_init 'proposals' or 'mixed')")
        if self.class_head.out_features != transformer.enc_class_head.out_features:
            raise ValueError(f"RouteQuerySelection has {self.class_head.out_features} proposal classes, "
                             f"the transformer's proposal head {transformer.enc_class_head.out_features}")
        return transformer.select_queries(state, heads=(self.class_head, self.box_head))


def strip_training_routes(state_dict: Dict) -> Dict:
    """Drop every training-only parameter (``routes.*``, ``query_groups.*``, ``extra_output_criteria.*``)
    so the state dict loads into the baseline."""
    return {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
