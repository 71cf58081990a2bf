"""Gather / scatter of a variable number of queries per image (QR-DETR Eq. 7-8), without a loop over images.

``QuerySubset.of(mask)`` lists, per image, the selected queries in their original order, padded to
the largest count in the batch; ``gather`` takes their rows, a block processes them (with
``context.select(subset)``, whose padding mask keeps padded rows out of self-attention), and
``scatter`` writes the processed rows back to their original positions. Padded rows are never
written back, and rows that were not selected keep their values exactly.
"""
from dataclasses import dataclass

import torch


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
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # selected first, in order
        counts = mask.sum(1)
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
