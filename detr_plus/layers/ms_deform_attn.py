"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 3), pure PyTorch.

Three implementations of the same sampling function, all taking

    value               (B, S, H, C)   S = sum of H_l * W_l over levels, H heads of C channels
    spatial_shapes      (L, 2)         (H_l, W_l) per level, long
    level_start_index   (L,)           offset of each level in S
    sampling_locations  (B, Q, H, L, P, 2)  normalized (x, y) in [0, 1], align_corners=False
    attention_weights   (B, Q, H, L, P)
and returning (B, Q, H * C):

* ``ms_deform_attn_bilinear_gather`` (the default, CPU and CUDA): builds the four bilinear taps of
  every sampling point as row indices into ``value`` seen as a (B*S*H, C) table, folds the
  attention weight into the tap weight, and lets ``F.embedding_bag(mode="sum")`` do the weighted
  gather-and-sum in one fused kernel. No per-level loop, no (B*H, C, Q, L*P) intermediate; the
  table is the projection output itself (no permute copy).
* ``ms_deform_attn_grid_sample``: the common formulation, one ``F.grid_sample`` per level.
* ``ms_deform_attn_naive``: per-point Python reference, for tests only.

Out-of-bounds taps read zero (``grid_sample`` ``padding_mode="zeros"``) in all three.
"""
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn


class _BilinearTapGather(torch.autograd.Function):
    """out[n] = sum_{p, k} weights[n, p, k] * table[base[n, p] + offset_k(p)]: every output row is a
    weighted bag of 4 bilinear taps per sampling point, the taps at fixed row offsets of the point's
    top-left tap.

    Forward is one ``F.embedding_bag``. The backward is written for this structure, as the generic
    embedding_bag backward sorts all taps and accumulates serially:
    * d/d weights: chunked gather of the tapped rows and a dot with the output row's gradient;
    * d/d table: points (not taps, 4x fewer) sorted by their top-left row, one embedding_bag per tap
      position gives each row's sum, and each sum is added at the tap's offset, level by level.
    ``level_slices`` lists, per level, (first row, end row, the 4 tap offsets) within one image's rows.
    """

    @staticmethod
    def forward(ctx, table, base, tap_offsets, weights, num_images, level_slices):
        rows = (base[..., None] + tap_offsets).flatten(1)  # (N, points * 4)
        ctx.save_for_backward(table, base, rows, weights)
        ctx.num_images, ctx.level_slices = num_images, level_slices
        return F.embedding_bag(rows, table, per_sample_weights=weights.flatten(1), mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        table, base, rows, weights = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # a stride-0 gradient (from .sum()) takes embedding_bag's slow path
        num_rows, channels = table.shape
        grad_table = grad_weights = None
        if ctx.needs_input_grad[3]:
            grad_weights = torch.empty_like(weights)
            flat_weights = grad_weights.view(rows.shape)
            chunk = max(1, (1 << 20) // (rows.shape[1] * channels))  # ~4 MB of gathered rows: stays in cache
            for start in range(0, rows.shape[0], chunk):
                gathered = table.index_select(0, rows[start : start + chunk].reshape(-1)).view(-1, rows.shape[1], channels)
                # vecdot, not bmm: CPU bmm on (n, taps, C) x (n, C, 1) falls back to a loop over n.
                flat_weights[start : start + chunk] = torch.linalg.vecdot(gathered, grad_out[start : start + chunk, None, :])
        if ctx.needs_input_grad[0]:
            flat_base = base.reshape(-1)
            order = torch.argsort(flat_base)
            counts = torch.bincount(flat_base, minlength=num_rows)
            offsets = (torch.cumsum(counts, 0) - counts).to(base.dtype)
            bag_of_point = (order // base.shape[1]).to(base.dtype)
            grad_table = torch.zeros_like(table)
            per_image = grad_table.view(ctx.num_images, -1, channels)
            for tap in range(4):
                tap_weights = weights[..., tap].reshape(-1).index_select(0, order)
                row_sums = F.embedding_bag(bag_of_point, grad_out, offsets, per_sample_weights=tap_weights, mode="sum")
                row_sums = row_sums.view(ctx.num_images, -1, channels)
                for first, end, tap_offset in ctx.level_slices:
                    shift = tap_offset[tap]
                    per_image[:, first + shift : end] += row_sums[:, first : end - shift]
        return grad_table, None, None, grad_weights, None, None


def pad_levels(value, spatial_shapes):
    """(B, S, H, C) -> (B, S_pad, H, C) with a one-pixel zero border around every level.

    With the border, the four bilinear taps of any point inside (-1, W) x (-1, H) are valid rows,
    and the zeros they may read are exactly grid_sample's zero padding.
    """
    B, _, H, C = value.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    levels = value.split(sizes, dim=1)
    padded = [
        F.pad(level.reshape(B, int(h), int(w), H * C), (0, 0, 1, 1, 1, 1)).flatten(1, 2)
        for level, (h, w) in zip(levels, spatial_shapes.tolist())
    ]
    return torch.cat(padded, dim=1).view(B, -1, H, C)


def ms_deform_attn_bilinear_gather(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    B, S, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    table = pad_levels(value, spatial_shapes)
    padded_shapes = spatial_shapes + 2
    padded_start = torch.cumsum(padded_shapes.prod(-1), 0) - padded_shapes.prod(-1)
    size_xy = spatial_shapes.flip(-1).view(L, 1, 2)
    # Pixel coordinates with the align_corners=False convention: x_pix = x * W - 0.5.
    xy = sampling_locations * size_xy.to(sampling_locations.dtype) - 0.5
    floor = torch.floor(xy)
    frac = xy - floor
    # A point with no tap inside its level contributes 0 (its corner is clamped only to stay in range).
    contributes = ((xy > -1) & (xy < size_xy)).all(-1)
    corner = (torch.minimum(floor.clamp(min=-1), size_xy - 1) + 1).to(torch.int32)  # in the padded level
    padded_width = padded_shapes[:, 1].view(L, 1).to(torch.int32)
    index_dtype = torch.int32 if B * table.shape[1] * H < 2**31 else torch.int64
    base = (corner[..., 1] * padded_width + corner[..., 0] + padded_start.view(L, 1).to(torch.int32)).to(index_dtype)
    base = base + (torch.arange(B, device=value.device, dtype=index_dtype) * table.shape[1]).view(B, 1, 1, 1, 1)
    base = base * H + torch.arange(H, device=value.device, dtype=index_dtype).view(1, 1, H, 1, 1)
    # Taps (x0,y0), (x1,y0), (x0,y1), (x1,y1) are fixed row offsets from the (x0, y0) row.
    zero = torch.zeros_like(padded_width)
    tap_offset = torch.cat([zero, zero + 1, padded_width, padded_width + 1], dim=1).to(index_dtype) * H  # (L, 4)
    axis_weight = torch.stack([1 - frac, frac], dim=-1)  # (..., L, P, xy, tap)
    point_weight = attention_weights * contributes
    weight = (point_weight[..., None, None] * axis_weight[..., 1, :, None] * axis_weight[..., 0, None, :]).flatten(-2)
    level_slices = [
        (int(first) * H, int(first + size) * H, tuple(int(o) for o in offsets))
        for first, size, offsets in zip(padded_start.tolist(), padded_shapes.prod(-1).tolist(), tap_offset.tolist())
    ]
    out = _BilinearTapGather.apply(
        table.view(-1, C), base.reshape(-1, L * P), tap_offset.repeat_interleave(P, dim=0),
        weight.to(value.dtype).reshape(-1, L * P, 4), B, level_slices,
    )
    return out.view(B, Q, H * C)


def ms_deform_attn_grid_sample(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    B, S, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    value_levels = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1
    sampled: List[torch.Tensor] = []
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        v = value_levels[level].flatten(2).transpose(1, 2).reshape(B * H, C, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*H, Q, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(B * H, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*H, C, Q)
    return out.view(B, H * C, Q).transpose(1, 2).contiguous()


def ms_deform_attn_naive(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Literal per-point bilinear interpolation (slow; test reference only)."""
    B, S, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    out = value.new_zeros(B, Q, H, C)
    for b in range(B):
        for q in range(Q):
            for h in range(H):
                for l in range(L):
                    hl, wl = (int(s) for s in spatial_shapes[l])
                    start = int(level_start_index[l])
                    for p in range(P):
                        x = sampling_locations[b, q, h, l, p, 0] * wl - 0.5
                        y = sampling_locations[b, q, h, l, p, 1] * hl - 0.5
                        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
                        acc = value.new_zeros(C)
                        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            if 0 <= xi < wl and 0 <= yi < hl:
                                weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
                                acc = acc + weight * value[b, start + yi * wl + xi, h]
                        out[b, q, h] += attention_weights[b, q, h, l, p] * acc
    return out.view(B, Q, H * C)


IMPLEMENTATIONS = {
    "bilinear_gather": ms_deform_attn_bilinear_gather,
    "grid_sample": ms_deform_attn_grid_sample,
    "naive": ms_deform_attn_naive,
}


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention module (Deformable DETR Eq. 3): each query samples ``num_points`` values
    per head and level around its reference point and mixes them with softmax weights.

    ``reference_points`` is (B, Q, L, 2) normalized centres, or (B, Q, L, 4) boxes whose size scales
    the offsets (the box-refinement variant). Returns the projected attention output (B, Q, d),
    without residual or norm (those belong to the layer).
    """

    keeps_own_init = True  # the paper's offsets / weights init survives a model-wide Xavier init

    def __init__(self, embed_dim=256, num_heads=8, num_levels=4, num_points=4, implementation="bilinear_gather"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"Unknown deformable attention implementation {implementation!r}; use one of {list(IMPLEMENTATIONS)}")
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.implementation = implementation
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self):
        # Offsets start as a fixed star of directions, the k-th point k times further out (paper's init).
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index, value_padding_mask=None):
        B, Q, _ = query.shape
        S = value.shape[1]
        H, L, P = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(B, S, H, -1)
        offsets = self.sampling_offsets(query).view(B, Q, H, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
        if reference_points.shape[-1] == 2:
            normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # offsets are in pixels of each level
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = reference_points[:, :, None, :, None, :2] + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got shape {tuple(reference_points.shape)}")
        out = IMPLEMENTATIONS[self.implementation](value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)
