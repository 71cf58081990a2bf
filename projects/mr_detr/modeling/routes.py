"""Mr. DETR's training routes as the core's ``TrainingVariant``s (project page, "Method" and the route ablation;
docs/authors_code_facts.md#mr-detr).

* Route-2, the primary one-to-one route, is the baseline model itself (not built here).
* ``"route1"``: one-to-many with an independent FFN (both linears, every layer): the core's
  ``OwnFFNVariant``.
* ``"route3"``: one-to-many with instructive self-attention (``InstructiveSelfAttentionBranch``).
* ``"share_all"``: one-to-many on the primary route's own predictions (ablation table row 2,
  "Share All"): the base ``LayerVariant``, which shares everything.
* The route ablation's other rows (the core's ``OwnBlocksVariant``): ``"own_self_attn"`` (row 3,
  "Not shared Self-Attention"), ``"own_cross_attn"`` (row 4), Route-1 (row 5, "Not shared FFN");
  ``"shared_self_attn"`` (row 6: only the self-attention shared, own cross-attention and FFN),
  ``"shared_cross_attn"`` (row 7), ``"shared_ffn"`` (row 8); rows 9-12 combine two or three of
  rows 3-5 as routes of their own.
"""
from typing import Dict, Optional, Sequence

from detr_plus.modeling import (LayerVariant, OneToManyMatcher, OwnBlocksVariant, OwnFFNVariant, SetCriterion, TrainingVariant,
                                VariantQuerySelection)

from .instructive_attention import InstructiveSelfAttentionBranch

# route name -> the blocks it owns (the route ablation's rows 3-8, besides Route-1's FFN)
OWN_BLOCK_ROUTES = {"own_self_attn": ("self_attn",), "own_cross_attn": ("cross_attn",), "shared_self_attn": ("cross_attn", "ffn"),
                    "shared_cross_attn": ("self_attn", "ffn"), "shared_ffn": ("self_attn", "cross_attn")}
ROUTE_NAMES = ("route1", "route3", "share_all", *OWN_BLOCK_ROUTES)


def build_mr_detr_routes(num_layers: int, d_model: int, d_ffn: int, dropout: float = 0.0,
                         routes: Sequence[str] = ("route1", "route3"), num_instruction_tokens: int = 10,
                         instruct_groups: bool = False, criterion: Optional[SetCriterion] = None,
                         own_streams: bool = True, loss_scale: float = 1.0,
                         route3_proposal_classes: Optional[int] = None, num_heads: int = 8, num_levels: int = 4,
                         num_points: int = 4, group_losses: Sequence[str] = ()) -> Dict[str, TrainingVariant]:
    """The ``routes`` dict of ``DeformableDETR`` for the selected Mr. DETR routes, each with a branch
    in every decoder layer (every route gets the per-layer losses) and the o2m ``criterion``.

    ``criterion`` defaults to the authors' code (docs/authors_code_facts.md#mr-detr-one-to-many-matcher):
    ``OneToManyMatcher`` with quality
    0.3 class + 0.7 IoU, threshold 0.4, top-1 per GT kept, k = 6, positives capped at 0.25 x queries,
    and focal class 2, L1 5, GIoU 2. An empty ``routes`` gives the primary route alone (the baseline).

    ``own_streams`` (default): each route is a full pass through the weight-shared decoder, carrying
    its own queries and refined reference boxes from layer to layer, all starting from the shared
    object queries and boxes (the project page's routes; "instruction tokens convey information to
    object queries and subsequent network layers"). ``False`` branches every layer from the primary
    route's state instead (kept as an ablation). ``loss_scale`` multiplies every route's losses
    (1 in the paper: the same weights on every route).

    ``route3_proposal_classes`` (two-stage models): Route-3 gets its own query selection
    (``VariantQuerySelection`` with that many proposal classes, 1 for a class-agnostic proposal head):
    its own encoder heads, top-k proposals, reference boxes and positions, and its own encoder loss;
    the content queries stay shared, as in the authors' code
    (docs/authors_code_facts.md#mr-detr-two-stage-selection-and-encoder-losses).
    None: Route-3 starts from the primary queries.
    """
    unknown = [name for name in routes if name not in ROUTE_NAMES]
    if unknown or len(set(routes)) != len(routes):
        raise ValueError(f"routes={list(routes)}: expected distinct names from {ROUTE_NAMES}")
    if criterion is None:
        criterion = SetCriterion(OneToManyMatcher(topk=6, threshold=0.4, class_weight=0.3, max_positive_ratio=0.25),
                                 loss_weights={"class": 2.0, "bbox": 5.0, "giou": 2.0})
    branch_of = {
        "route1": lambda: OwnFFNVariant(d_model, d_ffn, dropout),
        "route3": lambda: InstructiveSelfAttentionBranch(d_model, num_instruction_tokens, instruct_groups),
        "share_all": LayerVariant,
        **{name: (lambda own=own: OwnBlocksVariant(own, d_model, d_ffn, dropout, num_heads, num_levels, num_points))
           for name, own in OWN_BLOCK_ROUTES.items()},
    }
    if route3_proposal_classes is not None and not own_streams:
        raise ValueError("Route-3's own query selection starts its own stream: needs own_streams=True")

    def selection_of(name):
        if name != "route3" or route3_proposal_classes is None:
            return None
        return VariantQuerySelection(d_model, route3_proposal_classes, xavier_init=True)  # the authors' xavier pass

    return {name: TrainingVariant([branch_of[name]() for _ in range(num_layers)], criterion, loss_scale, own_stream=own_streams,
                                group_losses=group_losses,
                                query_selection=selection_of(name))
            for name in routes}
