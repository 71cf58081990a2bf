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
  gather-and-sum in one fused kernel. No per-level loop, no (B*H, C, Q, L*P) intermediate, and
  (for levels of at least 2 x 2) no copy of ``value``: the table is the projection output itself.
* ``ms_deform_attn_grid_sample``: the common formulation, one ``F.grid_sample`` per level.
* ``ms_deform_attn_naive``: per-point Python reference, for tests only.

Out-of-bounds taps read zero (``grid_sample`` ``padding_mode="zeros"``) in all three.
"""
import functools
import logging
import math
import warnings
from typing import List, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .level_shapes import level_sizes
from .ms_deform_attn_triton import ms_deform_attn_triton, triton_unavailable_reason

# The CSR pattern below is built and used within one call; the beta notice would print on every run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

#: ``ms_deform_attn_bilinear_gather(layout=...)``: where the four taps of a point live.
#: "in_place": in ``value`` itself; a point whose taps straddle the map border is moved one pixel
#: inwards with its weights (exact, no copy; needs every level >= 2 x 2). "padded": in a copy of
#: ``value`` with a one-pixel zero border per level (any level size). "auto": in_place when it can.
TAP_LAYOUTS = ("auto", "in_place", "padded")
#: ``tap_dots=...``: how the backward computes grad_out . table[tap] for every tap (the gradient of
#: the tap weights). "sddmm": ``torch.sparse.sampled_addmm`` over the taps' sparsity pattern (reads
#: each table row in place: ~10x faster on CPU). "gather": chunked ``index_select`` + ``vecdot``
#: (any device and dtype). "auto": sddmm on CPU in float32 / float64, gather otherwise.
TAP_DOTS = ("auto", "sddmm", "gather")


class TapTable(NamedTuple):
    """Where the taps are: per level of one image, (first row, end row, the 4 tap row offsets) in
    the (B*S*H, C) table; the numbers of images, rows, heads and points per head. Hashable, so the
    backward's per-row layout is cached per shape. (Plain ints: under the JIT tracer of fvcore's
    flop count, arithmetic on a tensor's traced sizes inside the Function breaks the trace.)"""

    level_slices: Tuple[Tuple[int, int, Tuple[int, int, int, int]], ...]
    num_images: int
    num_rows: int
    num_heads: int
    points_per_head: int


@functools.lru_cache(maxsize=32)
def _tap_sources(tap_table: TapTable, device: torch.device, dtype: torch.dtype):
    """For every table row r and tap k, the top-left row b = r - offset_k whose point's k-th tap is r
    (``num_rows``, an always-empty bucket, where b would fall outside r's level), and k, flattened (r, k)."""
    rows_per_image = tap_table.num_rows // tap_table.num_images
    shift = torch.zeros(rows_per_image, 4, dtype=torch.long)
    first = torch.zeros(rows_per_image, 1, dtype=torch.long)
    for start, end, offsets in tap_table.level_slices:
        shift[start:end] = torch.tensor(offsets)
        first[start:end] = start
    source = torch.arange(rows_per_image).view(-1, 1) - shift
    image_start = (torch.arange(tap_table.num_images) * rows_per_image).view(-1, 1, 1)
    source = torch.where(source >= first, source + image_start, tap_table.num_rows)
    tap = torch.arange(4).repeat(tap_table.num_rows)
    return source.reshape(-1).to(device=device, dtype=dtype), tap.to(device=device, dtype=dtype)


def gather_chunk_rows(device: torch.device, taps: int, channels: int, num_out: int) -> int:
    """Output rows per chunk of the "gather" tap dots: on CPU ~1M gathered values (4 MB in float32:
    the chunk stays in cache); on a GPU, where every chunk is a few kernel launches, ~128M values
    (256 MB in bfloat16), i.e. a handful of chunks per COCO-size encoder layer instead of hundreds."""
    values = (1 << 20) if device.type == "cpu" else (1 << 27)
    return max(1, min(num_out, values // (taps * channels)))


def _count_per_row(rows, num_bins, dtype, use_bincount=None):
    """How many entries of ``rows`` hold each row index, in ``dtype``. ``bincount`` on CPU (fastest
    there); an ``index_add_`` elsewhere (a CUDA bincount waits for the device to size its output)."""
    if use_bincount is None:
        use_bincount = rows.device.type == "cpu"
    if use_bincount:
        return torch.bincount(rows, minlength=num_bins).to(dtype)
    return torch.zeros(num_bins, dtype=dtype, device=rows.device).index_add_(0, rows, rows.new_ones(1).to(dtype).expand(rows.numel()))


def _tap_dot_products(table, rows, grad_out, tap_dots):
    """(N, T) = grad_out[n] . table[rows[n, t]] for every tap: the gradient of the tap weights."""
    if tap_dots == "auto":  # CPU sampled_addmm takes float32 and float64 only (not autocast's bfloat16)
        tap_dots = "sddmm" if table.device.type == "cpu" and table.dtype in (torch.float32, torch.float64) else "gather"
    num_out, taps = rows.shape
    if tap_dots == "sddmm":
        row_starts = torch.arange(0, num_out * taps + 1, taps, dtype=rows.dtype, device=rows.device)
        pattern = torch.sparse_csr_tensor(
            row_starts, rows.reshape(-1), table.new_ones(num_out * taps), size=(num_out, table.shape[0]), check_invariants=False
        )
        return torch.sparse.sampled_addmm(pattern, grad_out, table.t(), beta=0.0).values().view(num_out, taps)
    dots = table.new_empty(num_out, taps)
    chunk = gather_chunk_rows(table.device, taps, table.shape[1], num_out)
    for start in range(0, num_out, chunk):
        gathered = table.index_select(0, rows[start : start + chunk].reshape(-1)).view(-1, taps, table.shape[1])
        # vecdot, not bmm: CPU bmm on (n, taps, C) x (n, C, 1) falls back to a loop over n.
        dots[start : start + chunk] = torch.linalg.vecdot(gathered, grad_out[start : start + chunk, None, :])
    return dots


def _segment_fill(values, lengths, ends, total, step=0):
    """``repeat_interleave(values, lengths) + step * arange(total)`` as a scatter of the differences
    at the segment starts into a constant ``step`` and one cumsum: ~6x faster on CPU, where
    repeat_interleave builds an index first."""
    jumps = values.clone()
    jumps[1:] -= values[:-1]
    marks = values.new_full((total + 1,), step)
    marks[0] = 0
    marks.index_add_(0, ends - lengths, jumps)
    return torch.cumsum(marks[:-1], 0, dtype=values.dtype)


def _table_gradient(grad_out, base, weights, tap_table):
    """d table = sum over taps of weight * grad_out[tap's output row], as ONE ``embedding_bag`` whose
    bags are the table rows: every row's bag lists the taps that read it. Only the points (not the
    4x more taps) are sorted, by top-left row; a tap k that reads row r belongs to the point with top
    left r - offset_k, so row r's bag is the concatenation of 4 runs of the sorted points."""
    dtype = base.dtype
    flat_base = base.reshape(-1)
    num_points, points_per_out = flat_base.numel(), base.shape[1]
    order = torch.argsort(flat_base)
    counts = _count_per_row(flat_base, tap_table.num_rows + 1, dtype)  # last bucket: always empty
    first_sorted = torch.cumsum(counts, 0, dtype=dtype) - counts
    sources, tap_of_run = _tap_sources(tap_table, flat_base.device, dtype)  # (rows * 4,): runs in bag order
    run_lengths = counts.index_select(0, sources)
    run_ends = torch.cumsum(run_lengths, 0, dtype=dtype)
    # Entry j of run (r, k) is sorted point first_sorted[source] + (j - run start), tap k: coded as
    # k * num_points + sorted point, run-constant plus j (the weights are tap-major, (4, points)).
    run_value = (first_sorted.index_select(0, sources) - run_ends + run_lengths).add_(tap_of_run, alpha=num_points)
    entries = _segment_fill(run_value, run_lengths, run_ends, 4 * num_points, step=1)
    sorted_weights = weights.transpose(0, 1).reshape(4, -1).index_select(1, order).view(-1)
    out_row_of_sorted = torch.div(order, points_per_out, rounding_mode="floor").to(dtype).repeat(4)
    bag_starts = torch.cat([run_ends.new_zeros(1), run_ends[3:-1:4]])  # a row's bag starts where the row before ends
    return F.embedding_bag(
        out_row_of_sorted.index_select(0, entries), grad_out, bag_starts,
        per_sample_weights=sorted_weights.index_select(0, entries), mode="sum",
    )


def _tent_slopes(cell):
    """The slopes of the two tents max(0, 1 - |u|) and max(0, 1 - |u - 1|) on the unit interval
    ``cell`` = floor(u) (an integer in float), with grid_sample's one-sided convention at the kinks
    (a point exactly on a pixel is that pixel's first tap): on [0, 1) (-1, +1), on [-1, 0) (+1, 0),
    on [1, 2) (0, -1), elsewhere (0, 0). As second differences of clamps: clamp(c, m - 1, m) steps
    by 1 from c = m - 1 to m, so clamp(c, -2, -1) - 2 clamp(c, -1, 0) + clamp(c, 0, 1) is +1 at
    c = -1, -1 at c = 0, 0 elsewhere (float arithmetic only: comparisons and where are ~5x slower
    per element on CPU)."""
    steps = [torch.clamp(cell, m - 1, m) for m in (-1, 0, 1, 2)]
    return steps[0].add(steps[1], alpha=-2).add_(steps[2]), steps[1].add(steps[2], alpha=-2).add_(steps[3])


class _BilinearSampling(torch.autograd.Function):
    """Eq. 3's sampling: out[n] = sum_{p, k} a[n, p] * w_k(x, y) * table[base[n, p] + offset_k(p)],
    every output row a weighted bag of 4 bilinear taps per point, the taps at fixed row offsets of
    the point's first tap; w_k = tent_x * tent_y of the tap (see :func:`_axis_taps`).

    Forward is one ``F.embedding_bag``. The backward is written for this structure (autograd through
    the weight arithmetic and the generic embedding_bag backward, which sorts all taps and
    accumulates serially, cost more than the gather): the tap dots g . table[tap]
    (:func:`_tap_dot_products`) give d/d a and, with the tents' slopes, d/d x and d/d y in closed
    form; d table is :func:`_table_gradient` (one embedding_bag, no atomics: deterministic).

    The per-point arithmetic runs on planes: x and y as (2, B, Q, H, L, P), the taps of a point as
    (N, 4, points), constants expanded over the innermost dims. On CPU an elementwise op whose
    operands broadcast or interleave along the innermost dim is 5-30x slower per element.
    """

    @staticmethod
    def forward(ctx, table, locations, attention_weights, pixel_scale, first_low, first_high, row_step_y, row_start,
                tap_offsets, tap_table, tap_dots):
        # Tensors as arguments of their own (not in a tuple): the JIT tracer (fvcore's flop count) needs it.
        ctx.input_dtypes = locations.dtype, attention_weights.dtype
        num_out, points = tap_table.num_images * locations.shape[1] * tap_table.num_heads, tap_table.points_per_head
        # Pixel coordinates with the align_corners=False convention: x_pix = x * W - 0.5; at least in
        # float32 (the row index is computed in float, and a half-precision location is too coarse).
        attention = attention_weights.to(pixel_scale.dtype).contiguous()
        # x and y as planes (2, B, Q, H, L, P); contiguous first, as elementwise outputs keep their input's layout.
        pixel = (locations.to(pixel_scale.dtype).movedim(-1, 0).contiguous() * pixel_scale).sub_(0.5)
        first, tents, cell = _axis_taps(pixel, first_low, first_high)
        # The first tap's table row, in float (exact: row_start's dtype holds every row), then one cast.
        base = torch.addcmul(row_start, first[1], row_step_y).add_(first[0], alpha=tap_table.num_heads)
        base = base.to(tap_offsets.dtype).view(num_out, points)
        (tent_x0, tent_y0), (tent_x1, tent_y1) = tents.view(2, 2, num_out, points)
        weighted_y0, weighted_y1 = tent_y0 * attention.view(num_out, points), tent_y1 * attention.view(num_out, points)
        # Taps (x0, y0), (x1, y0), (x0, y1), (x1, y1), tap-major per output row (a bag's order is free).
        weights = table.new_empty(num_out, 4, points)
        for tap, (weighted_y, tent_x) in enumerate([(weighted_y0, tent_x0), (weighted_y0, tent_x1),
                                                    (weighted_y1, tent_x0), (weighted_y1, tent_x1)]):
            torch.mul(weighted_y, tent_x, out=weights[:, tap])
        rows = (base[:, None] + tap_offsets).view(num_out, -1)  # (N, 4 * points)
        # Not ``rows`` (4x ``base``'s memory, ~80 MB per COCO encoder layer): the backward adds it again.
        ctx.save_for_backward(table, base, tap_offsets, weights, attention, tents, cell, pixel_scale)
        ctx.tap_table, ctx.tap_dots = tap_table, tap_dots
        return F.embedding_bag(rows, table, per_sample_weights=weights.view(num_out, -1), mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        table, base, tap_offsets, weights, attention, tents, cell, pixel_scale = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # a stride-0 gradient (from .sum()) takes embedding_bag's slow path
        grad_table = grad_locations = grad_attention = None
        num_out, points = base.shape
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            rows = (base[:, None] + tap_offsets).view(num_out, -1)
            dots = _tap_dot_products(table, rows, grad_out, ctx.tap_dots).to(attention.dtype)
            d00, d10, d01, d11 = dots.view(num_out, 4, points).unbind(1)  # taps (x, y)
            (tent_x0, tent_y0), (tent_x1, tent_y1) = tents.view(2, 2, num_out, points)
            dot_x0 = torch.addcmul(d00 * tent_y0, d01, tent_y1)  # summed over the y taps
            dot_x1 = torch.addcmul(d10 * tent_y0, d11, tent_y1)
            if ctx.needs_input_grad[2]:
                grad_attention = torch.addcmul(dot_x0 * tent_x0, dot_x1, tent_x1).view(attention.shape)
                grad_attention = grad_attention.to(ctx.input_dtypes[1])
            if ctx.needs_input_grad[1]:
                dot_first = torch.stack([dot_x0, torch.addcmul(d00 * tent_x0, d10, tent_x1)])  # (axis, N, points)
                dot_second = torch.stack([dot_x1, torch.addcmul(d01 * tent_x0, d11, tent_x1)])
                slope_first, slope_second = _tent_slopes(cell)
                grad_pixel = torch.addcmul(slope_first.view_as(dot_first) * dot_first, slope_second.view_as(dot_first), dot_second)
                grad_pixel = grad_pixel.view_as(cell) * (attention * pixel_scale)
                grad_locations = torch.stack(grad_pixel.unbind(0), -1).to(ctx.input_dtypes[0])
        if ctx.needs_input_grad[0]:
            grad_table = _table_gradient(grad_out, base, weights, ctx.tap_table)
        return grad_table, grad_locations, grad_attention, None, None, None, None, None, None, None, None


def pad_levels(value, spatial_shapes):
    """(B, S, H, C) -> (B, S_pad, H, C) with a one-pixel zero border around every level.

    With the border, the four bilinear taps of any point inside (-1, W) x (-1, H) are valid rows,
    and the zeros they may read are exactly grid_sample's zero padding.
    """
    B, _, H, C = value.shape
    shapes = level_sizes(spatial_shapes)
    levels = value.split([h * w for h, w in shapes], dim=1)
    padded = [F.pad(level.reshape(B, h, w, H * C), (0, 0, 1, 1, 1, 1)).flatten(1, 2) for level, (h, w) in zip(levels, shapes)]
    return torch.cat(padded, dim=1).view(B, -1, H, C)


def _axis_taps(pixel, first_low, first_high):
    """For pixel coordinates ``pixel`` (2 axes, ...; align_corners=False): the first of a point's two
    taps along each axis (in the level's pixels), both taps' weights (2 taps, 2 axes, ...), and the
    unit interval of the tents the offset from the first tap lies on (2 axes, ...; see
    :func:`_tent_slopes`).

    A pixel's bilinear weight is the tent max(0, 1 - |coordinate - pixel|), whichever two pixels are
    the taps. in_place (``first_low`` 0, ``first_high`` size - 2): both taps are real pixels (a
    point at -0.3 reads pixel 0 with weight 0.7 as its first tap); a tap further than one pixel away
    weighs 0. padded (-1 and size - 1): the taps may be the zero border.
    """
    floor = torch.floor(pixel)
    first = torch.clamp(floor, first_low, first_high)
    offset = pixel - first
    tents = torch.stack([1 - offset.abs(), 1 - (offset - 1).abs_()]).clamp_(min=0)
    return first, tents, floor.sub_(first)


def ms_deform_attn_bilinear_gather(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, layout="auto", tap_dots="auto"
):
    """See the module docstring; ``layout`` (:data:`TAP_LAYOUTS`) and ``tap_dots`` (:data:`TAP_DOTS`)
    choose how, never what: every choice returns the same values and gradients."""
    if layout not in TAP_LAYOUTS or tap_dots not in TAP_DOTS:
        raise ValueError(f"layout must be one of {TAP_LAYOUTS} (got {layout!r}), tap_dots one of {TAP_DOTS} (got {tap_dots!r})")
    # Plain ints, also under the JIT tracer (where sizes are traced values the Function cannot use).
    B, S, H, C = (int(n) for n in value.shape)
    Q, L, P = (int(n) for n in sampling_locations.shape[1:2] + sampling_locations.shape[3:5])
    shapes = level_sizes(spatial_shapes)
    smallest = min(min(h, w) for h, w in shapes)
    in_place = smallest >= 2 if layout == "auto" else layout == "in_place"
    if in_place and smallest < 2:
        raise ValueError(f"layout='in_place' needs every level at least 2 x 2 pixels; levels (H, W): {[list(s) for s in shapes]}")
    table = value if in_place else pad_levels(value, spatial_shapes)
    dtype = torch.promote_types(sampling_locations.dtype, torch.float32)
    layout_tensors, tap_table = _level_layout(shapes, in_place, B, H, P, value.device, dtype)
    out = _BilinearSampling.apply(table.reshape(-1, C), sampling_locations, attention_weights, *layout_tensors,
                                  tap_table, tap_dots)
    return out.view(B, Q, H * C)


@functools.lru_cache(maxsize=32)
def _level_layout(level_sizes, in_place, num_images, num_heads, points, device, dtype):
    """The table's per-level numbers for :class:`_BilinearSampling`, made once per shape and device
    (on CUDA, tensors built from lists every call are host-to-device copies), each expanded over a
    level's points: (W, H), the first taps' range per axis, the table rows of one pixel step down,
    every (image, head, level)'s row of its pixel (0, 0), the 4 tap row offsets; and the TapTable."""
    table_shapes = [(h, w) if in_place else (h + 2, w + 2) for h, w in level_sizes]
    table_starts = [0]
    for h, w in table_shapes[:-1]:
        table_starts.append(table_starts[-1] + h * w)
    rows_per_image = sum(h * w for h, w in table_shapes) * num_heads
    num_rows = num_images * rows_per_image
    index_dtype = torch.int32 if num_rows < 2**31 else torch.int64
    row_dtype = dtype if num_rows < 2**24 else torch.float64  # rows computed in float are exact below 2**24
    # Taps (x0,y0), (x1,y0), (x0,y1), (x1,y1) are fixed row offsets from the (x0, y0) row.
    level_offsets = [(0, num_heads, w * num_heads, (w + 1) * num_heads) for _, w in table_shapes]
    tap_table = TapTable(
        tuple((start * num_heads, (start + h * w) * num_heads, offsets)
              for start, (h, w), offsets in zip(table_starts, table_shapes, level_offsets)),
        num_images, num_rows, num_heads, len(level_sizes) * points,
    )
    L = len(level_sizes)
    border = 0 if in_place else 1  # padded: pixel (0, 0) is (1, 1) of the table's level
    origin = torch.tensor([start + border * (w + 1) for start, (_, w) in zip(table_starts, table_shapes)], dtype=torch.float64)
    row_start = (origin.view(1, 1, L) * num_heads + torch.arange(num_heads, dtype=torch.float64).view(1, num_heads, 1)
                 + (torch.arange(num_images, dtype=torch.float64) * rows_per_image).view(num_images, 1, 1))
    sizes = torch.tensor([(w, h) for h, w in level_sizes], dtype=torch.float64).t().reshape(2, 1, 1, 1, L, 1)

    def per_point(t, dtype):  # expanded over the points: broadcasting along the innermost dim is slow on CPU
        return t.expand(*t.shape[:-1], points).contiguous().to(device=device, dtype=dtype)

    with torch.inference_mode(False):  # made first under inference_mode, they could not be saved for a backward later
        tensors = (
            per_point(sizes, dtype),
            per_point(torch.full_like(sizes, -border), dtype),
            per_point(sizes - 2 + border, dtype),
            per_point(torch.tensor([w * num_heads for _, w in table_shapes], dtype=torch.float64).view(L, 1), row_dtype),
            per_point(row_start.view(num_images, 1, num_heads, L, 1), row_dtype),
            torch.tensor(level_offsets, device=device, dtype=index_dtype).t().repeat_interleave(points, dim=1),
        )
    return tensors, tap_table


def ms_deform_attn_grid_sample(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    B, S, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = level_sizes(spatial_shapes)
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled: List[torch.Tensor] = []
    for level, (h, w) in enumerate(shapes):
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
    "triton": ms_deform_attn_triton,
    "grid_sample": ms_deform_attn_grid_sample,
    "naive": ms_deform_attn_naive,
}


#: ``implementation="auto"``: Triton on CUDA when it works there, ``bilinear_gather`` otherwise.
CHOICES = ("auto", *IMPLEMENTATIONS)
_logged_choices = set()


def resolve_implementation(implementation: str, device: torch.device, needs_grad: bool) -> str:
    """The implementation a call runs: "auto" is Triton on CUDA when it can run there, else
    ``bilinear_gather``; "triton" too becomes ``bilinear_gather`` when a backward follows under
    ``torch.use_deterministic_algorithms(True)`` (its value gradient adds with atomics). Each
    such choice is logged once per process."""
    chosen, why = implementation, ""
    if implementation == "auto":
        reason = "CPU: Triton runs there only in its interpreter" if device.type == "cpu" else triton_unavailable_reason(device)
        chosen, why = ("bilinear_gather", reason) if reason else ("triton", f"Triton works on {device.type}")
    if chosen == "triton" and needs_grad and torch.are_deterministic_algorithms_enabled():
        chosen, why = "bilinear_gather", "deterministic algorithms requested; the Triton backward adds with atomics"
    if chosen != implementation and (implementation, chosen, device.type) not in _logged_choices:
        _logged_choices.add((implementation, chosen, device.type))
        logging.getLogger(__name__).info(f"Deformable attention: implementation={implementation!r} uses {chosen!r} ({why}).")
    return chosen


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention module (Deformable DETR Eq. 3): each query samples ``num_points`` values
    per head and level around its reference point and mixes them with softmax weights.

    ``reference_points`` is (B, Q, L, 2) normalized centres, or (B, Q, L, 4) boxes whose size scales
    the offsets (the box-refinement variant). Returns the projected attention output (B, Q, d),
    without residual or norm (those belong to the layer).
    """

    keeps_own_init = True  # the paper's offsets / weights init survives a model-wide Xavier init

    def __init__(self, embed_dim=256, num_heads=8, num_levels=4, num_points=4, implementation="auto"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if implementation not in CHOICES:
            raise ValueError(f"Unknown deformable attention implementation {implementation!r}; use one of {list(CHOICES)}")
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
        # The sampling locations stay float32 under autocast: in bfloat16 a location on a 100-pixel
        # map would be off by up to a quarter pixel.
        at_least_float = torch.promote_types(query.dtype, torch.float32)
        with torch.autocast(query.device.type, enabled=False):
            offsets = self.sampling_offsets(query.to(at_least_float)).view(B, Q, H, L, P, 2)
            reference_points = reference_points.to(at_least_float)
        weights = self.attention_weights(query).to(at_least_float).view(B, Q, H, L * P).softmax(-1).view(B, Q, H, L, P)
        if reference_points.shape[-1] == 2:
            normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # offsets are in pixels of each level
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = reference_points[:, :, None, :, None, :2] + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 values, got shape {tuple(reference_points.shape)}")
        needs_grad = torch.is_grad_enabled() and (value.requires_grad or locations.requires_grad)
        implementation = resolve_implementation(self.implementation, value.device, needs_grad)
        out = IMPLEMENTATIONS[implementation](value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)
