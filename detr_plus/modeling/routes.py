"""Training routes: extra ways to supervise the shared decoder that exist only in training (DESIGN.md).

A ``TrainingRoute`` gives each decoder layer an optional ``LayerBranch`` (its per-layer module
variants) and owns the criterion (matcher + losses + weights) its predictions are trained with.
The meta-architecture runs routes only in training; at inference only the primary route exists,
and ``strip_training_routes`` turns a method's checkpoint into a plain baseline checkpoint.
"""
from typing import Dict, Optional, Sequence

from torch import nn

from .criterion import SetCriterion
from .decoder import LayerBranch

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
    reference)."""

    def __init__(self, branches: Sequence[Optional[LayerBranch]], criterion: SetCriterion, loss_scale: float = 1.0,
                 own_stream: bool = False, detach_reference: bool = False):
        super().__init__()
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


def strip_training_routes(state_dict: Dict) -> Dict:
    """Drop every training-only parameter (``routes.*``, ``query_groups.*``, ``extra_output_criteria.*``)
    so the state dict loads into the baseline."""
    return {k: v for k, v in state_dict.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
