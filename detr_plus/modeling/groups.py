"""Query groups: extra queries a method decodes beside the primary ones, in training only.

A group brings its own initial queries (content, reference boxes, optionally static positions and
per-image padding), the criterion its predictions are trained with, and optionally a fixed
assignment (denoising groups know their targets). The decoder concatenates every group after the
primary queries, masks self-attention so that each group sees only itself (``sees_primary`` lets
a group also read the primary queries, as DINO's denoising groups do), decodes all of them in one
pass, and splits the predictions back per group and per layer. Examples: OD-DETR's teacher-query
and auxiliary groups (Sec. 3.3-3.4), H-DETR's hybrid group, DINO's denoising groups.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.nn.utils.rnn import pad_sequence

from .structures import DecoderQueries

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class QueryGroup:
    """One training batch's extra query group (see the module docstring).

    ``criterion`` is called like ``SetCriterion``: ``criterion(logits, boxes, targets, num_boxes,
    indices=..., valid=..., context=LossContext)``; ``indices`` (per image ``(query, gt)``, query
    indices within the group) fixes the assignment of every layer; ``loss_scale`` multiplies the
    group's losses; ``extras`` carries what the criterion needs besides the predictions (e.g. a
    teacher's outputs for the same queries)."""

    queries: DecoderQueries
    criterion: Any
    indices: Optional[Indices] = None
    sees_primary: bool = False
    loss_scale: float = 1.0
    extras: Dict[str, Any] = field(default_factory=dict)


def group_attention_mask(sizes: Sequence[int], sees_primary: Sequence[bool] = (), device=None) -> torch.Tensor:
    """(T, T) bool mask over queries concatenated in ``sizes`` order (the primary queries first),
    True where a query may NOT attend: each part sees only itself, and part ``g >= 1`` also sees the
    primary part when ``sees_primary[g - 1]``."""
    sizes = [int(s) for s in sizes]
    part_of = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    blocked = part_of[:, None] != part_of[None, :]
    for g, sees in enumerate(sees_primary, start=1):
        if sees:
            blocked[part_of == g, : sizes[0]] = False
    return blocked


def group_self_attn_mask(group_sizes: Sequence[int], device=None) -> torch.Tensor:
    """(Q, Q) bool mask, True where a query may NOT attend: queries attend only within their group."""
    return group_attention_mask(group_sizes, device=device)


def pad_per_image(rows: Sequence[torch.Tensor], min_length: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image (n_b, ...) tensors -> ((B, N, ...) zero-padded, (B, N) bool valid), N = max n_b
    (at least ``min_length``): how a group whose size depends on the image (OD-DETR's 2 queries per
    GT, DINO's denoising queries) is given to the decoder."""
    lengths = torch.tensor([len(r) for r in rows], device=rows[0].device)
    padded = pad_sequence(list(rows), batch_first=True)
    if padded.shape[1] < min_length:
        padded = torch.cat([padded, padded.new_zeros((len(rows), min_length - padded.shape[1]) + padded.shape[2:])], 1)
    valid = torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]
    return padded, valid
