"""Query groups: extra queries a method decodes beside the primary ones, in training only.

A group (``QueryGroup`` in ``contracts``) brings its own initial queries (content, reference boxes,
optionally static positions and per-image padding), the criterion its predictions are trained with,
and optionally a fixed assignment (denoising groups know their targets). ``JointQueries`` does the
bookkeeping of one pass: it concatenates every group after the primary queries, masks
self-attention so that each group sees only itself (``sees_primary`` lets a group also read the
primary queries, as DINO's denoising groups do), and splits the predictions back per group and per
layer. Examples: OD-DETR's teacher-query and auxiliary groups (Sec. 3.3-3.4), H-DETR's hybrid
group, DINO's denoising groups.
"""
import itertools
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.nn.utils.rnn import pad_sequence

from .contracts import DecoderOutput, DecoderQueries, LayerPredictions, QueryGroup


def group_attention_mask(sizes: Sequence[int], sees_primary: Sequence[bool] = (), device=None) -> torch.Tensor:
    """(T, T) bool mask over queries concatenated in ``sizes`` order (the primary queries first),
    True where a query may NOT attend: each part sees only itself, and part ``g >= 1`` also sees the
    primary part when ``sees_primary[g - 1]``."""
    bounds = list(itertools.accumulate((int(s) for s in sizes), initial=0))
    blocked = torch.ones(bounds[-1], bounds[-1], dtype=torch.bool, device=device)
    for start, end in zip(bounds[:-1], bounds[1:]):  # slices, not index masks: no host sync on a GPU
        blocked[start:end, start:end] = False
    for g, sees in enumerate(sees_primary, start=1):
        if sees:
            blocked[bounds[g] : bounds[g + 1], : bounds[1]] = False
    return blocked


def pad_per_image(rows: Sequence[torch.Tensor], min_length: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image (n_b, ...) tensors -> ((B, N, ...) zero-padded, (B, N) bool valid), N = max n_b
    (at least ``min_length``): how a group whose size depends on the image (OD-DETR's 2 queries per
    GT, DINO's denoising queries) is given to the decoder. N may be 0 (no image has a row)."""
    lengths = torch.tensor([len(r) for r in rows], device=rows[0].device)
    padded = pad_sequence(list(rows), batch_first=True)
    if padded.shape[1] < min_length:
        padded = torch.cat([padded, padded.new_zeros((len(rows), min_length - padded.shape[1]) + padded.shape[2:])], 1)
    valid = torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]
    return padded, valid


class JointQueries:
    """The primary queries and every group's, as one decoder pass sees them: ``queries`` (the
    concatenation), ``mask`` (the self-attention mask between the parts, None without groups),
    ``padding`` (True on padded queries, None without padding), ``group_queries`` ((B, T) True on
    the groups' queries, None without groups) and ``sizes`` (primary first)."""

    def __init__(self, primary: DecoderQueries, groups: Optional[Mapping[str, QueryGroup]] = None):
        self.groups = dict(groups or {})
        self.sizes = [len(primary)] + [len(g.queries) for g in self.groups.values()]
        self.queries = self.with_groups(primary)
        self.mask = None
        if self.groups:
            sees = [g.sees_primary for g in self.groups.values()]
            self.mask = group_attention_mask(self.sizes, sees, primary.content.device)
            start = self.sizes[0]
            for group, size in zip(self.groups.values(), self.sizes[1:]):
                if group.self_attn_mask is not None:  # a group's own mask inside its block
                    self.mask[start : start + size, start : start + size] |= group.self_attn_mask.to(self.mask.device)
                start += size
        self.padding = None if self.queries.valid is None else ~self.queries.valid
        self.group_queries = None
        if self.groups:
            beyond_primary = torch.arange(sum(self.sizes), device=primary.content.device) >= self.sizes[0]
            self.group_queries = beyond_primary.expand(primary.content.shape[0], -1)

    def with_groups(self, start: DecoderQueries) -> DecoderQueries:
        """``start`` (queries in place of the primary ones) followed by every group's queries."""
        return DecoderQueries.concat([start] + [g.queries for g in self.groups.values()]) if self.groups else start

    def split(self, layers: List[LayerPredictions], variants: Dict[str, List[Optional[LayerPredictions]]]) -> DecoderOutput:
        """The joint pass's per-layer predictions as a ``DecoderOutput``: the primary part, every
        variant's primary part, every group's part and every variant's part of every group. ``extras`` stay with the primary layers, cut
        to the primary queries where they are per query (further ``LayerPredictions``, (B, Q, ...)
        tensors): a wrapper's exit predictions are supervised for the primary queries only."""
        if not self.groups:
            return DecoderOutput(layers, variants)
        bounds = list(itertools.accumulate(self.sizes))
        primary = []
        for joint in layers:
            part = joint.part(0, self.sizes[0])
            part.extras = {name: self.primary_part(value) for name, value in joint.extras.items()}
            primary.append(part)
        spans = list(zip(self.groups, bounds[:-1], bounds[1:]))
        variant_groups = {name: {group: [None if p is None else p.part(start, end) for p in layers_of] for group, start, end in spans}
                          for name, layers_of in variants.items()}
        variants = {name: [None if p is None else p.part(0, self.sizes[0]) for p in layers_of]
                    for name, layers_of in variants.items()}
        groups = {name: [p.part(start, end) for p in layers] for name, start, end in spans}
        return DecoderOutput(primary, variants, groups, variant_groups)

    def primary_part(self, value):
        """``value`` cut to the primary queries if it is per query of the joint pass."""
        total = sum(self.sizes)
        if isinstance(value, LayerPredictions):
            return value.part(0, self.sizes[0])
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == total:
            return value[:, : self.sizes[0]]
        return value
