"""H-DETR's hybrid matching branch ("DETRs with Hybrid Matching", arXiv 2207.13080, Sec. 3.2.1) as a
query-group source of the shared core: extra one-to-many queries decoded beside the primary
(one-to-one) ones in training, masked from them, matched with Hungarian to each image's GT set
repeated k times. Nothing of it runs at inference."""
from typing import Dict

import torch
from torch import nn

from .contracts import DecoderQueries, QueryGroup, TrainingBatch


def repeat_targets(targets, repeats: int):
    """Every image's GT set repeated ``repeats`` times (GT j of copy r is GT r x n + j)."""
    return [{**t, "labels": t["labels"].repeat(repeats), "boxes": t["boxes"].repeat(repeats, 1)} for t in targets]


class RepeatedTargets(nn.Module):
    """A criterion called against the GT sets repeated ``repeats`` times (H-DETR's one-to-many loss:
    Hungarian on the repeated set, normalised by the repeated box count). The pairs it returns name
    the original GT (index mod n), so a head's loss on them supervises with the real objects."""

    def __init__(self, criterion: nn.Module, repeats: int = 6):
        super().__init__()
        if repeats < 1:
            raise ValueError(f"RepeatedTargets: repeats={repeats} must be at least 1")
        self.criterion, self.repeats = criterion, repeats

    def forward(self, logits, boxes, targets, num_boxes: float, indices=None, valid=None, context=None):
        terms, matched = self.criterion(logits, boxes, repeat_targets(targets, self.repeats), num_boxes * self.repeats,
                                        indices=indices, valid=valid, context=context)
        original = [(q, g % max(len(t["labels"]), 1)) for (q, g), t in zip(matched, targets)]
        return terms, original


class HybridQueries(nn.Module):
    """``model.group_sources["one2many"]``: H-DETR's one-to-many queries on a two-stage model. Each
    step the transformer selects the top-(P + ``num_queries``) proposals (P primary queries); the
    primary queries are the first P, as at inference, and this group is the next ``num_queries``,
    with learned content queries of its own under mixed selection (H-DETR's one embedding of
    P + 1500 rows, split the same way). The group sees only itself; ``criterion`` is a
    ``RepeatedTargets`` (k = 6, loss weight 1 in H-DETR). The selection runs the encoder's proposal
    heads once more (cheap beside the decoder), so the primary selection stays untouched."""

    def __init__(self, criterion: nn.Module, num_queries: int = 1500, d_model: int = 256, loss_scale: float = 1.0):
        super().__init__()
        self.criterion, self.num_queries, self.loss_scale = criterion, num_queries, loss_scale
        self.content = nn.Embedding(num_queries, d_model)

    def forward(self, batch: TrainingBatch) -> Dict[str, QueryGroup]:
        transformer = batch.transformer
        primary = transformer.num_queries
        mixed = transformer.query_init == "mixed"
        content = torch.cat([transformer.query_content.weight, self.content.weight]) if mixed else None
        selection = transformer.select_queries(batch.state, num_queries=primary + self.num_queries, content=content)
        q = selection.queries
        part_content = q.content[:, primary:]
        if not mixed:  # content from the proposals: the embedding stays in the graph (DDP without unused parameters)
            part_content = part_content + 0.0 * self.content.weight.sum()
        part = DecoderQueries(part_content, q.reference[:, primary:], None if q.position is None else q.position[:, primary:])
        return {"": QueryGroup(part, self.criterion, loss_scale=self.loss_scale)}
