"""Multi-scale deformable attention: the three sampling implementations agree (values and gradients),
the fused gather path passes gradcheck, and the module samples where the paper says it does."""
import pytest
import torch

import detr_plus  # noqa: F401  (detectron2 compatibility patches)
from detr_plus.layers import (
    MultiScaleDeformableAttention,
    ms_deform_attn_bilinear_gather,
    ms_deform_attn_grid_sample,
    ms_deform_attn_naive,
)

FAST = {"bilinear_gather": ms_deform_attn_bilinear_gather, "grid_sample": ms_deform_attn_grid_sample}
IMPLEMENTATION_NAMES = ["bilinear_gather", "grid_sample", "naive"]


def level_layout(shapes):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return spatial_shapes, level_start_index, int(sizes.sum())


def random_inputs(shapes, batch=2, queries=4, heads=2, channels=3, points=3, dtype=torch.float64, seed=0, spread=(-0.2, 1.2)):
    """Random value / locations / weights; locations partly outside [0, 1] (zero padding is exercised)."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index, total = level_layout(shapes)
    levels = len(shapes)
    value = torch.randn(batch, total, heads, channels, generator=gen, dtype=dtype)
    low, high = spread
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=dtype) * (high - low) + low
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, spatial_shapes, level_start_index, locations, weights


SHAPES = [(5, 6), (3, 4), (1, 7), (1, 1)]  # includes a 1xN and a 1x1 level


@pytest.mark.parametrize("name", list(FAST))
def test_matches_naive_values_and_gradients(name):
    value, shapes, start, locations, weights = random_inputs(SHAPES)
    assert ((locations < 0) | (locations > 1)).any(), "test must include out-of-range sampling locations"
    inputs = [value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_()]
    expected = ms_deform_attn_naive(value, shapes, start, locations, weights)
    actual = FAST[name](value, shapes, start, locations, weights)
    assert actual.shape == expected.shape == (2, 4, 2 * 3)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    assert expected.abs().max() > 0.1  # not a trivially-zero comparison

    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, inputs, grad_out)
    actual_grads = torch.autograd.grad(actual, inputs, grad_out)
    for what, e, a in zip(("value", "sampling_locations", "attention_weights"), expected_grads, actual_grads):
        assert a.shape == e.shape
        assert e.abs().max() > 0, what
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10, msg=lambda m: f"grad wrt {what}: {m}")


def test_gather_matches_grid_sample_float32_moderate():
    value, shapes, start, locations, weights = random_inputs(
        [(8, 8), (4, 4)], batch=2, queries=50, heads=4, channels=8, points=4, dtype=torch.float32, seed=1
    )
    inputs = [value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_()]
    expected = ms_deform_attn_grid_sample(value, shapes, start, locations, weights)
    actual = ms_deform_attn_bilinear_gather(value, shapes, start, locations, weights)
    assert actual.dtype == torch.float32 and actual.shape == (2, 50, 32)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    # Plain sum as the loss: the incoming gradient is an expanded (stride-0) tensor.
    for e, a in zip(torch.autograd.grad(expected.sum(), inputs), torch.autograd.grad(actual.sum(), inputs)):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


def test_bilinear_gather_gradcheck():
    gen = torch.Generator().manual_seed(3)
    shapes_list = [(3, 4), (1, 2), (1, 1)]
    spatial_shapes, start, total = level_layout(shapes_list)
    B, Q, H, C, L, P = 2, 2, 2, 2, 3, 2
    value = torch.randn(B, total, H, C, generator=gen, dtype=torch.float64)
    # Pixel coordinates = integer + fraction in [0.15, 0.85]: never on a pixel-grid kink. Integers
    # from -2 to size cover fully-outside, border (zero-padding) and interior points.
    size_xy = spatial_shapes.flip(-1).to(torch.float64).view(L, 1, 2)
    integer = torch.stack([torch.randint(-2, int(s) + 1, (B, Q, H, P), generator=gen) for s in size_xy.flatten()], -1)
    integer = integer.view(B, Q, H, P, L, 2).permute(0, 1, 2, 4, 3, 5).to(torch.float64)
    frac = torch.rand(B, Q, H, L, P, 2, generator=gen, dtype=torch.float64) * 0.7 + 0.15
    locations = (integer + frac + 0.5) / size_xy
    weights = torch.rand(B, Q, H, L, P, generator=gen, dtype=torch.float64)
    inputs = (value.requires_grad_(), spatial_shapes, start, locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(ms_deform_attn_bilinear_gather, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", ["in_place", "padded"])
@pytest.mark.parametrize("tap_dots", ["sddmm", "gather"])
def test_gather_layouts_and_tap_dots_match_naive(layout, tap_dots):
    """Every way of running bilinear_gather gives the naive reference's values and gradients, with
    points straddling every border (the in-place layout moves those one pixel inwards)."""
    shapes = [(5, 6), (3, 4), (2, 2)]
    value, spatial_shapes, start, locations, weights = random_inputs(shapes, queries=40, spread=(-0.3, 1.3), seed=5)
    size_xy = spatial_shapes.flip(-1).to(torch.float64).view(3, 1, 2)
    pix = locations * size_xy - 0.5
    assert ((pix > -1) & (pix < 0)).any() and ((pix > size_xy - 1) & (pix < size_xy)).any()  # straddling both borders
    inputs = [value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_()]
    expected = ms_deform_attn_naive(value, spatial_shapes, start, locations, weights)
    actual = ms_deform_attn_bilinear_gather(value, spatial_shapes, start, locations, weights, layout=layout, tap_dots=tap_dots)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(expected)
    for e, a in zip(torch.autograd.grad(expected, inputs, grad_out), torch.autograd.grad(actual, inputs, grad_out)):
        assert e.abs().max() > 0
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


def test_in_place_layout_gradcheck_and_limits():
    gen = torch.Generator().manual_seed(4)
    spatial_shapes, start, total = level_layout([(3, 4), (2, 3)])
    value = torch.randn(2, total, 2, 2, generator=gen, dtype=torch.float64)
    # Pixel coordinates integer + [0.15, 0.85] (no kink), integers -2..size: outside, border, inside.
    integer = torch.randint(-2, 5, (2, 3, 2, 2, 2, 2), generator=gen).to(torch.float64)
    frac = torch.rand(2, 3, 2, 2, 2, 2, generator=gen, dtype=torch.float64) * 0.7 + 0.15
    size_xy = spatial_shapes.flip(-1).to(torch.float64).view(2, 1, 2)
    locations = (integer + frac + 0.5) / size_xy
    weights = torch.rand(2, 3, 2, 2, 2, generator=gen, dtype=torch.float64)

    def fn(v, loc, w):
        return ms_deform_attn_bilinear_gather(v, spatial_shapes, start, loc, w, layout="in_place")

    assert torch.autograd.gradcheck(fn, (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_()), eps=1e-6, atol=1e-7)
    one_pixel_wide, start1, total1 = level_layout([(3, 4), (2, 1)])
    with pytest.raises(ValueError, match=r"in_place.*at least 2 x 2.*\[\[3, 4\], \[2, 1\]\]"):
        ms_deform_attn_bilinear_gather(torch.zeros(1, total1, 1, 2), one_pixel_wide, start1, torch.zeros(1, 1, 1, 2, 1, 2),
                                       torch.ones(1, 1, 1, 2, 1), layout="in_place")
    with pytest.raises(ValueError, match="tap_dots one of"):
        ms_deform_attn_bilinear_gather(value, spatial_shapes, start, locations, weights, tap_dots="bmm")


@pytest.mark.parametrize("name", IMPLEMENTATION_NAMES)
def test_single_pixel_hand_checkable(name):
    fn = {"naive": ms_deform_attn_naive, **FAST}[name]
    shapes, start, total = level_layout([(5, 6), (2, 3)])
    value = torch.zeros(1, total, 1, 2, dtype=torch.float64)
    pixel = torch.tensor([3.0, -2.0], dtype=torch.float64)
    row, col = 2, 3  # level 0 (H=5, W=6)
    value[0, row * 6 + col, 0] = pixel

    def sample(x_pix, y_pix, level=0):
        h, w = shapes[level].tolist()
        loc = torch.zeros(1, 1, 1, 2, 1, 2, dtype=torch.float64)
        loc[0, 0, 0, level, 0] = torch.tensor([(x_pix + 0.5) / w, (y_pix + 0.5) / h], dtype=torch.float64)
        weights = torch.zeros(1, 1, 1, 2, 1, dtype=torch.float64)
        weights[0, 0, 0, level, 0] = 1.0
        return fn(value, shapes, start, loc, weights).view(2)

    torch.testing.assert_close(sample(col, row), pixel)  # exactly at the pixel centre
    torch.testing.assert_close(sample(col + 0.5, row), pixel / 2)  # half a pixel right
    torch.testing.assert_close(sample(col, row - 0.5), pixel / 2)  # half a pixel up
    torch.testing.assert_close(sample(col - 0.5, row + 0.5), pixel / 4)  # diagonal: 1/2 * 1/2
    torch.testing.assert_close(sample(col + 0.25, row), pixel * 0.75)
    torch.testing.assert_close(sample(col + 1, row), torch.zeros(2, dtype=torch.float64))  # the neighbour is empty
    torch.testing.assert_close(sample(col, row, level=1), torch.zeros(2, dtype=torch.float64))  # other level

    # Zero padding at the border: a corner pixel sampled half a pixel outside the map reads half of it.
    value.zero_()
    value[0, 0, 0] = pixel
    torch.testing.assert_close(sample(-0.5, 0), pixel / 2)
    torch.testing.assert_close(sample(-0.5, -0.5), pixel / 4)
    torch.testing.assert_close(sample(-1.0, 0), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(sample(-5.0, -3.0), torch.zeros(2, dtype=torch.float64))


def random_module(implementation, levels=3, seed=0, dim=8, heads=2, points=3):
    torch.manual_seed(seed)
    module = MultiScaleDeformableAttention(dim, heads, levels, points, implementation).double()
    with torch.no_grad():  # the paper init makes offsets query-independent: randomize everything
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return module


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_implementations_agree(ref_dim):
    shapes, start, total = level_layout([(4, 5), (2, 3), (1, 1)])
    gen = torch.Generator().manual_seed(7)
    B, Q, d = 2, 6, 8
    query = torch.randn(B, Q, d, generator=gen, dtype=torch.float64)
    value = torch.randn(B, total, d, generator=gen, dtype=torch.float64)
    reference = torch.rand(B, Q, 3, ref_dim, generator=gen, dtype=torch.float64)
    if ref_dim == 4:
        reference[..., 2:] = reference[..., 2:] * 0.5 + 0.1
    padding = torch.zeros(B, total, dtype=torch.bool)
    padding[1, 3] = True
    outputs = {}
    reference_module = random_module("naive")
    for name in IMPLEMENTATION_NAMES:
        module = random_module(name)
        module.load_state_dict(reference_module.state_dict())
        outputs[name] = module(query, reference, value, shapes, start, padding)
    assert outputs["naive"].shape == (B, Q, d)
    for name in FAST:
        torch.testing.assert_close(outputs[name], outputs["naive"], rtol=1e-9, atol=1e-10)


def test_bad_implementation_and_reference_shape():
    with pytest.raises(ValueError, match="implementation"):
        MultiScaleDeformableAttention(8, 2, 1, 1, implementation="cuda_kernel")
    with pytest.raises(ValueError):
        MultiScaleDeformableAttention(10, 3, 1, 1)
    module = MultiScaleDeformableAttention(8, 2, 1, 1)
    shapes, start, total = level_layout([(2, 2)])
    with pytest.raises(ValueError, match="reference_points"):
        module(torch.zeros(1, 1, 8), torch.zeros(1, 1, 1, 3), torch.zeros(1, total, 8), shapes, start)


def identity_module(levels, points, implementation="bilinear_gather", heads=1, dim=2):
    """Identity projections, uniform attention weights, offsets set by the caller (via the bias)."""
    module = MultiScaleDeformableAttention(dim, heads, levels, points, implementation).double()
    with torch.no_grad():
        for linear in (module.value_proj, module.output_proj):
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
        module.sampling_offsets.weight.zero_()
        module.sampling_offsets.bias.zero_()
        module.attention_weights.weight.zero_()
        module.attention_weights.bias.zero_()
    return module


@pytest.mark.parametrize("implementation", IMPLEMENTATION_NAMES)
def test_module_sampling_geometry(implementation):
    """Offsets are in pixels of each level for 2-d references, and (offset / P) * half the box size
    for 4-d references; weights are a softmax over levels x points; padding zeroes values."""
    shapes, start, total = level_layout([(4, 5), (2, 3)])
    value = torch.arange(total * 2, dtype=torch.float64).view(1, total, 2)
    query = torch.zeros(1, 1, 2, dtype=torch.float64)

    def pixel(level, row, col):
        w = shapes[level, 1].item()
        return value[0, start[level] + row * w + col]

    def centre(level, row, col):
        h, w = shapes[level].tolist()
        return [(col + 0.5) / w, (row + 0.5) / h]

    module = identity_module(levels=2, points=1, implementation=implementation)
    # Level 0 pixel (1, 2), level 1 pixel (0, 1); zero offsets: the mean of the two pixels.
    reference = torch.tensor([[[centre(0, 1, 2), centre(1, 0, 1)]]], dtype=torch.float64)
    out = module(query, reference, value, shapes, start)
    torch.testing.assert_close(out.view(2), (pixel(0, 1, 2) + pixel(1, 0, 1)) / 2)
    # An offset of (+1, +1) pixels moves both samples one pixel right and down.
    with torch.no_grad():
        module.sampling_offsets.bias.fill_(1.0)
    out = module(query, reference, value, shapes, start)
    torch.testing.assert_close(out.view(2), (pixel(0, 2, 3) + pixel(1, 1, 2)) / 2)
    # Padding mask: the level-1 pixel reads zero.
    padding = torch.zeros(1, total, dtype=torch.bool)
    padding[0, start[1] + 1 * 3 + 2] = True
    out = module(query, reference, value, shapes, start, padding)
    torch.testing.assert_close(out.view(2), pixel(0, 2, 3) / 2)

    # 4-d reference (one level, P=2 points): location = centre + offset / P * (w, h) / 2.
    shapes1, start1, total1 = level_layout([(4, 5)])
    value1 = value[:, :total1]
    module = identity_module(levels=1, points=2, implementation=implementation)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 0.0, -2.0]))  # point 0: +x, point 1: -y
    box = torch.tensor([[[[(2 + 0.5) / 5, (1 + 0.5) / 4, 2 * 2 / 5, 2 * 2 / 4]]]], dtype=torch.float64)
    # point 0 moves 1/2 * (4/5)/2 = 1 pixel right; point 1 moves 2/2 * (4/4)/2 * 4 = 2 pixels up.
    out = module(query, box, value1, shapes1, start1)
    expected = value1[0, 1 * 5 + 3] / 2  # point 1 lands on the centre of row -1: outside, reads zero
    torch.testing.assert_close(out.view(2), expected)
    with torch.no_grad():
        module.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.5]))  # point 1: 1/2 * 1 / 2 / 2 = 1/8 = half a pixel down
    out = module(query, box, value1, shapes1, start1)
    expected = (value1[0, 1 * 5 + 3] + (value1[0, 1 * 5 + 2] + value1[0, 2 * 5 + 2]) / 2) / 2
    torch.testing.assert_close(out.view(2), expected)


def test_segment_fill_equals_repeat_interleave_with_empty_segments():
    from detr_plus.layers.ms_deform_attn import _segment_fill

    values = torch.tensor([5, -3, 7, 2, 9, 4], dtype=torch.int32)
    lengths = torch.tensor([0, 2, 0, 3, 1, 0], dtype=torch.int32)  # empty first, middle and last runs
    ends = torch.cumsum(lengths, 0, dtype=torch.int32)
    expected = torch.repeat_interleave(values, lengths) + 4 * torch.arange(6, dtype=torch.int32)
    assert _segment_fill(values, lengths, ends, 6, step=4).tolist() == expected.tolist() == [-3, 1, 10, 14, 18, 29]


@pytest.mark.parametrize("layout", ["in_place", "padded"])
def test_location_gradient_on_pixel_centres_matches_grid_sample(layout):
    """Exactly on a pixel centre (every query at initialisation with zero offsets) the location
    gradient is one-sided; bilinear_gather takes grid_sample's side, also on the first and last pixel.
    Power-of-two sizes: the centres are exact in both implementations' arithmetic (elsewhere rounding
    decides the side, which is why the benchmark leaves such coordinates out)."""
    value, spatial_shapes, start, _, weights = random_inputs([(4, 8), (2, 4)], queries=6, seed=9)
    sizes = spatial_shapes.flip(-1).to(torch.float64)  # (W, H) per level
    gen = torch.Generator().manual_seed(2)
    pixel = torch.stack([torch.randint(0, int(s), (2, 6, 2, 3), generator=gen) for s in sizes.flatten()], -1)
    pixel = pixel.view(2, 6, 2, 3, 2, 2).permute(0, 1, 2, 4, 3, 5).to(torch.float64)  # (B, Q, H, L, P, xy)
    pixel[0, 0, 0, :, 0] = 0.0
    pixel[0, 0, 1, :, 0] = sizes - 1  # first and last pixel of every level
    locations = (pixel + 0.5) / sizes.view(2, 1, 2)
    grads = {}
    for name, fn in (("grid_sample", ms_deform_attn_grid_sample), ("gather", ms_deform_attn_bilinear_gather)):
        loc = locations.clone().requires_grad_()
        kwargs = {"layout": layout} if name == "gather" else {}
        out = fn(value, spatial_shapes, start, loc, weights, **kwargs)
        grads[name] = torch.autograd.grad(out, loc, torch.ones_like(out))[0]
    assert grads["grid_sample"].abs().max() > 0.1
    torch.testing.assert_close(grads["gather"], grads["grid_sample"], rtol=1e-10, atol=1e-10)


def test_half_precision_locations_index_in_float32_and_return_their_dtype():
    """Half-precision locations and weights (autocast) are upcast for the index arithmetic: same
    output as their float32 copies (a 64-pixel-wide map needs more than float16's row precision),
    and their gradients come back in float16."""
    value, spatial_shapes, start, locations, weights = random_inputs([(64, 64), (4, 4)], queries=20, dtype=torch.float32, seed=3)
    half_loc, half_w = locations.half().requires_grad_(), weights.half().requires_grad_()
    out = ms_deform_attn_bilinear_gather(value, spatial_shapes, start, half_loc, half_w)
    expected = ms_deform_attn_bilinear_gather(value, spatial_shapes, start, half_loc.detach().float(), half_w.detach().float())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad_loc, grad_w = torch.autograd.grad(out.sum(), [half_loc, half_w])
    assert grad_loc.dtype == grad_w.dtype == torch.float16 and grad_loc.abs().max() > 0


def test_backward_saves_one_row_index_per_point_and_works_after_inference_mode():
    """The Function keeps the points' first-tap rows (N x points), not the 4x larger tap rows, among
    what it saves for the backward; and its per-shape layout tensors, if first made under
    inference_mode (evaluation), still serve a training step of the same shape afterwards."""
    shapes = [(6, 5), (3, 4)]
    value, spatial_shapes, start, locations, weights = random_inputs(shapes, batch=2, queries=7, heads=2, points=3, seed=5)
    from detr_plus.layers.ms_deform_attn import _level_layout

    _level_layout.cache_clear()  # so the first layout of this shape is made here, under inference_mode
    with torch.inference_mode():
        evaluated = ms_deform_attn_bilinear_gather(value, spatial_shapes, start, locations, weights)
    saved_index_counts = []

    def pack(tensor):
        if not tensor.is_floating_point():
            saved_index_counts.append(tensor.numel())
        return tensor

    value.requires_grad_()
    locations.requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ms_deform_attn_bilinear_gather(value, spatial_shapes, start, locations, weights)
    torch.testing.assert_close(out, evaluated, rtol=0, atol=0)
    points = 2 * 7 * 2  # batch * queries * heads
    levels_x_points = len(shapes) * 3
    # base (N, L*P) and the per-point tap offsets (L*P, 4): no (N, L*P*4) tap-row tensor.
    assert sorted(saved_index_counts) == sorted([points * levels_x_points, levels_x_points * 4])
    grad_value, grad_locations = torch.autograd.grad(out.square().sum(), [value, locations])
    reference = ms_deform_attn_naive(value, spatial_shapes, start, locations, weights)
    expected = torch.autograd.grad(reference.square().sum(), [value, locations])
    torch.testing.assert_close(grad_value, expected[0])
    torch.testing.assert_close(grad_locations, expected[1])


def test_tent_slopes_by_hand():
    """The one-sided slopes of the tents max(0, 1 - |u|) and max(0, 1 - |u - 1|) per unit interval
    floor(u): (-1, +1) on [0, 1), (+1, 0) on [-1, 0), (0, -1) on [1, 2), (0, 0) further out."""
    from detr_plus.layers.ms_deform_attn import _tent_slopes

    cells = torch.tensor([-5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 7.0])
    first, second = _tent_slopes(cells)
    assert first.tolist() == [0, 0, 1, -1, 0, 0, 0]
    assert second.tolist() == [0, 0, 0, 1, -1, 0, 0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_value_on_cpu_trains(dtype):
    """A bfloat16 / float16 value map on CPU (CPU autocast) runs forward and backward (CPU
    sampled_addmm has no such kernels: "auto" takes the gather there) and stays close to float32."""
    value, spatial_shapes, start, locations, weights = random_inputs([(8, 8), (4, 4)], queries=12, dtype=torch.float32, seed=4)
    results = []
    for table_dtype in (torch.float32, dtype):
        table = value.detach().to(table_dtype).requires_grad_()
        loc, w = locations.clone().requires_grad_(), weights.clone().requires_grad_()
        out = ms_deform_attn_bilinear_gather(table, spatial_shapes, start, loc, w)
        out.float().square().sum().backward()
        assert out.dtype == table_dtype and table.grad.dtype == table_dtype
        results.append([out.float(), table.grad.float(), loc.grad, w.grad])
    for full, low in zip(*results):
        torch.testing.assert_close(low, full, rtol=0.05, atol=0.05)


def test_row_arithmetic_falls_back_to_float64_past_float32_exact_integers():
    """The first tap's row is computed in float: float32 holds every integer below 2**24 exactly,
    so a table of that many rows or more (2 images of a 4096 x 4096 level) gets float64 row
    constants; the pixel constants stay in the locations' dtype. (Layout only: no such table is made.)"""
    from detr_plus.layers.ms_deform_attn import _level_layout

    cpu = torch.device("cpu")
    for sizes, images, row_dtype in ((((64, 64), (8, 8)), 2, torch.float32), (((4096, 4096),), 2, torch.float64)):
        (scale, low, high, row_step_y, row_start, _), tap_table = _level_layout(sizes, True, images, 1, 1, cpu, torch.float32)
        assert (tap_table.num_rows >= 2**24) == (row_dtype == torch.float64)
        assert row_step_y.dtype == row_start.dtype == row_dtype and scale.dtype == low.dtype == high.dtype == torch.float32
    assert int(row_start[1, 0, 0, 0, 0]) == 4096 * 4096  # image 1's first row: exact


def test_backward_on_a_gpu_loops_over_a_handful_of_chunks_at_coco_size():
    """The "gather" tap dots (the backward's path off the CPU) at a COCO-size encoder layer: 800 x
    1333 images, batch 2, levels 100x167 .. 13x21, 8 heads of 32 channels, 4 levels x 4 points (64
    taps per output row). Chunked for a CPU cache that is ~700 Python iterations; on a GPU a
    handful. (On CPU "auto" takes sampled_addmm in float32 / float64: no loop at all.)"""
    from detr_plus.layers.ms_deform_attn import gather_chunk_rows

    num_out = 2 * (100 * 167 + 50 * 84 + 25 * 42 + 13 * 21) * 8
    chunks = {device: -(-num_out // gather_chunk_rows(torch.device(device), 64, 32, num_out)) for device in ("cpu", "cuda")}
    assert chunks == {"cpu": 695, "cuda": 6}


def test_row_counts_without_bincount_equal_bincount():
    from detr_plus.layers.ms_deform_attn import _count_per_row

    rows = torch.tensor([3, 0, 3, 5, 3])
    expected = [1.0, 0.0, 0.0, 3.0, 0.0, 1.0, 0.0]
    for use_bincount in (True, False):
        assert _count_per_row(rows, 7, torch.float32, use_bincount=use_bincount).tolist() == expected
