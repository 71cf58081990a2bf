"""Gather / scatter of a variable number of queries per image (QR-DETR Eq. 7-8), without a loop over images.

``QuerySubset.of(mask)`` lists, per image, the selected queries in their original order, padded to
the largest count in the batch; ``gather`` takes their rows, a block processes them (with
``context.select(subset)``, whose padding mask keeps padded rows out of self-attention), and
``scatter`` writes the processed rows back to their original positions. Padded rows are never
written back, and rows that were not selected keep their values exactly. Inside ``static_slots()``
(the exported graph) the subset has a slot for every query, the unselected ones as padding: no shape
depends on the data, and the selected rows get the same values.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_STATIC_SLOTS = [False]


@contextmanager
def static_slots():
    """Inside the block, ``QuerySubset.of`` gives every query a slot (for a graph without data-dependent
    shapes: ONNX export); outside, one slot per selected query of the fullest image."""
    saved = _STATIC_SLOTS[0]
    _STATIC_SLOTS[0] = True
    try:
        yield
    finally:
        _STATIC_SLOTS[0] = saved


def selected_first(mask: torch.Tensor) -> torch.Tensor:
    """(B, Q) order putting each row's selected positions first, then the others, each in their order:
    a sort on keys that are all distinct ((not selected) x Q + position), so any sort is stable, and
    the ONNX exporter takes it (it has no stable sort)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return ((~mask).long() * mask.shape[1] + positions).argsort(dim=1)


@dataclass
class QuerySubset:
    index: torch.Tensor  # (B, K) long: positions of the selected queries (original order), then padding
    valid: torch.Tensor  # (B, K) bool: False on padding
    padded: bool = False  # some image has fewer than K selected queries

    @staticmethod
    def of(mask: torch.Tensor) -> "QuerySubset":
        """The subset of queries where ``mask`` (B, Q) is True. K is the largest count per image (one
        host sync for the shape); the padding slots point at distinct unselected queries, so ``index``
        rows never repeat a position."""
        order = selected_first(mask)
        counts = mask.sum(1)
        if _STATIC_SLOTS[0]:  # export: no data-dependent shape; every query a slot, the unselected as padding
            size, smallest = mask.shape[1], -1
        else:
            size, smallest = torch.stack([counts.max(), counts.min()]).tolist() if mask.numel() else (0, 0)
        index = order[:, :size]
        valid = torch.arange(size, device=mask.device)[None] < counts[:, None]
        return QuerySubset(index, valid, padded=smallest < size)

    @property
    def size(self) -> int:
        return self.index.shape[1]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Q, ...) -> (B, K, ...): the selected rows (padding rows hold unselected queries' values)."""
        index = self.index.view(*self.index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, index)

    def scatter(self, base: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``base`` (B, Q, ...) with the valid rows of ``values`` (B, K, ...) written at their positions."""
        valid = self.valid.view(*self.valid.shape, *([1] * (values.dim() - 2)))
        values = torch.where(valid, values, self.gather(base))  # padding writes back what is there
        index = self.index.view(*self.index.shape, *([1] * (base.dim() - 2))).expand(-1, -1, *base.shape[2:])
        return base.scatter(1, index, values)
