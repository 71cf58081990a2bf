"""Data passed between the transformer's stages: the encoder's state and a decoder's initial queries."""
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch


@dataclass
class EncoderState:
    memory: torch.Tensor  # (B, S, d)
    spatial_shapes: torch.Tensor  # (L, 2)
    level_start_index: torch.Tensor  # (L,)
    valid_ratios: torch.Tensor  # (B, L, 2) (w, h) fraction of each level that is not padding
    padding_mask: torch.Tensor  # (B, S) True on padding


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

    def detach(self) -> "DecoderQueries":
        return replace(self, content=self.content.detach(), reference=self.reference.detach(),
                       position=None if self.position is None else self.position.detach())
