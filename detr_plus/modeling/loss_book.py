"""The weighted losses of one training step, gathered under their keys (``contracts``: loss keys)."""
from typing import Dict, List, Mapping, Optional

import torch

from .contracts import Indices, LayerPredictions, LossContext, QueryGroup, Targets, TrainingBatch


class LossBook:
    """Calls each criterion on its predictions and files the weighted losses under
    ``{prefix}{term}{suffix}`` and the matched pairs under the predictions' name (one entry per
    layer, in call order: the primary queries' first), so a later criterion reads the earlier
    ones' pairs (``LossContext.matching``). ``heads`` (``contracts.Head``) add their losses for the
    pairs each decoder layer's criterion matched."""

    def __init__(self, batch: TrainingBatch, heads: Optional[Mapping[str, torch.nn.Module]] = None, num_layers: int = 0):
        self.batch, self.heads, self.num_layers = batch, dict(heads or {}), num_layers
        self.losses: Dict[str, torch.Tensor] = {}
        self.matching: Dict[str, List[Indices]] = {}

    def add(self, criterion, logits, boxes, valid, name: str, prefix: str, suffix: str, layer, scale: float = 1.0,
            group: Optional[QueryGroup] = None, indices: Optional[Indices] = None, targets: Optional[Targets] = None):
        targets = self.batch.targets if targets is None else targets
        context = LossContext(layer=layer, name=name, batch=self.batch, group=group, matching=self.matching)
        # float32 predictions (from autocast's half types): every criterion and matcher computes in float32.
        logits, boxes = logits.float(), boxes.float()
        terms, matched = criterion(logits, boxes, targets, self.batch.num_boxes, indices=indices, valid=valid, context=context)
        self.file(terms, prefix, suffix, scale)
        self.matching.setdefault(name, []).append(matched)
        return matched

    def skip(self, name: str):
        """A layer without predictions under ``name``: its matching entry is None, so entry i is layer i."""
        self.matching.setdefault(name, []).append(None)

    def add_layer(self, criterion, predictions: LayerPredictions, name: str, prefix: str, suffix: str, layer: int,
                  scale: float = 1.0, group: Optional[QueryGroup] = None):
        """A decoder layer's predictions: the criterion's losses, then every head's for the same pairs."""
        indices = None if group is None else group.indices
        matched = self.add(criterion, predictions.logits, predictions.boxes, predictions.valid, name, prefix, suffix, layer,
                           scale, group, indices)
        for head_name, head in self.heads.items():
            if head.layers == "all" or layer == self.num_layers - 1:
                if hasattr(head, "matched_loss"):  # computes its outputs for the matched queries only
                    terms = head.matched_loss(predictions, self.batch.state, self.batch.targets, matched, self.batch.num_boxes)
                else:
                    outputs = head(predictions, self.batch.state)
                    terms = head.loss(outputs, predictions, self.batch.targets, matched, self.batch.num_boxes)
                self.file(terms, prefix, suffix, scale, owner=f"head {head_name!r}")

    def file(self, terms: Dict[str, torch.Tensor], prefix: str, suffix: str, scale: float, owner: str = ""):
        for term, value in terms.items():
            key = f"{prefix}{term}{suffix}"
            if key in self.losses:
                raise ValueError(f"loss key {key!r} is produced twice{' (by ' + owner + ')' if owner else ''}: give the term another name")
            self.losses[key] = value * scale
