"""Multi-scale deformable attention (Deformable DETR Eq. 3) as Triton kernels: no compiled extension.

Same arguments and result as :func:`ms_deform_attn_bilinear_gather` (see ``ms_deform_attn``).
One program per (image, query, head): it reads the query's L * P sampling points as one vector,
gathers the four bilinear taps of every point as (points, channels) tiles of ``value`` and sums
them weighted, accumulating in float32 whatever the input dtype (float32, float16, bfloat16).
The level shapes and starts are read from the device tensors inside the kernel, so a call needs
no host-side copy of them and no synchronisation.

The backward recomputes the taps and gives, per point, the gradient of its attention weight
(sum over taps of bilinear weight x (grad_out . tap value)) and of its location (the same dots
with the bilinear weights' slopes, the convention of ``grid_sample``: the taps are floor(x) and
floor(x) + 1, out-of-map taps read zero). The value gradient is scattered with float32
``atomic_add``: the order of the additions, hence the last bits, varies between runs. Under
``torch.use_deterministic_algorithms(True)`` :class:`~.ms_deform_attn.MultiScaleDeformableAttention`
therefore uses ``bilinear_gather`` (no atomics) instead.

With TRITON_INTERPRET=1 set before triton is imported, the kernel runs in Triton's interpreter on
CPU tensors (numpy; for the correctness tests only: slow).
"""
import functools

import torch

try:  # Triton ships with the CUDA torch wheels; a CPU-only build may lack it.
    import triton
    import triton.language as tl
    constexpr = tl.constexpr
except ImportError:  # pragma: no cover - exercised through triton_unavailable_reason()
    triton = tl = None
    constexpr = int  # the kernels' annotations only


def triton_unavailable_reason(device: torch.device):
    """None when the Triton kernels can run on ``device``, else why not (a sentence)."""
    if triton is None:
        return "triton is not installed"
    if device.type == "cpu":
        if not triton.knobs.runtime.interpret:
            return "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before triton is imported"
        return None
    if device.type != "cuda":
        return f"no Triton backend for device {device.type!r}"
    try:
        major, _ = torch.cuda.get_device_capability(device)
    except Exception as error:  # noqa: BLE001 - any driver error means "not usable"
        return f"CUDA device not usable: {error}"
    if major < 7:
        return f"Triton needs compute capability >= 7.0, device has {major}.x"
    return _first_launch_failure(str(device))


@functools.lru_cache(maxsize=None)
def _first_launch_failure(device: str):
    """None when the kernel compiles and runs on ``device`` (one tiny forward), else the error: a
    machine whose Triton cannot compile (no compiler back end for its driver) falls back instead of failing later."""
    try:
        value = torch.ones(1, 2, 1, 1, device=device)
        shapes = torch.tensor([[1, 2]], device=device)
        starts = torch.zeros(1, dtype=torch.long, device=device)
        out = _TritonSampling.apply(value, shapes, starts, torch.full((1, 1, 1, 1, 1, 2), 0.5, device=device),
                                    torch.ones(1, 1, 1, 1, 1, device=device))
        return None if float(out) == 1.0 else f"the kernel's first result was {float(out)}, not 1.0"
    except Exception as error:  # noqa: BLE001 - any failure means "not usable here"
        return f"the kernel does not compile or run here ({type(error).__name__}: {str(error)[:200]})"


def _sampling_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                     grad_out_ptr, grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
                     S, Q, H: constexpr, C: constexpr, LP: constexpr, P: constexpr,
                     BLOCK_LP: constexpr, BLOCK_C: constexpr, BACKWARD: constexpr):
    """Forward (``BACKWARD`` False: writes ``out``) or backward (writes the three gradients) of one
    (image, query, head): one kernel, so both read the points and taps the same way."""
    program = tl.program_id(0)  # (image, query, head), head fastest
    head = program % H
    image = (program // H) // Q
    offs_p = tl.arange(0, BLOCK_LP)
    mask_p = offs_p < LP
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    # Every point's level (H_l, W_l) and start, read on the device; points are level-major.
    level = offs_p // P
    height = tl.load(shapes_ptr + level * 2, mask=mask_p, other=1).to(tl.int32)
    width = tl.load(shapes_ptr + level * 2 + 1, mask=mask_p, other=1).to(tl.int32)
    start = tl.load(starts_ptr + level, mask=mask_p, other=0).to(tl.int32)
    point = program.to(tl.int64) * LP + offs_p
    x = tl.load(loc_ptr + point * 2, mask=mask_p, other=0.0).to(tl.float32)
    y = tl.load(loc_ptr + point * 2 + 1, mask=mask_p, other=0.0).to(tl.float32)
    weight = tl.load(attn_ptr + point, mask=mask_p, other=0.0).to(tl.float32)
    # align_corners=False: pixel = location * size - 0.5. A point a pixel or more off the map reads
    # only zeros (and gets no gradient: all its taps are off the map); clamping it to 2 pixels off
    # changes neither and keeps the int cast safe.
    px = x * width.to(tl.float32) - 0.5
    py = y * height.to(tl.float32) - 0.5
    px = tl.minimum(tl.maximum(px, -2.0), width.to(tl.float32) + 1.0)
    py = tl.minimum(tl.maximum(py, -2.0), height.to(tl.float32) + 1.0)
    x0f = tl.floor(px)
    y0f = tl.floor(py)
    fx = px - x0f
    fy = py - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    image_row = image.to(tl.int64) * S
    if BACKWARD:
        grad_out = tl.load(grad_out_ptr + program.to(tl.int64) * C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        grad_weight = tl.zeros([BLOCK_LP], dtype=tl.float32)
        grad_fx = tl.zeros([BLOCK_LP], dtype=tl.float32)  # d out / d fx, before the attention weight
        grad_fy = tl.zeros([BLOCK_LP], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for tap in tl.static_range(4):  # (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)
        dx = tap % 2
        dy = tap // 2
        xi = x0 + dx
        yi = y0 + dy
        inside = mask_p & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        weight_x = fx * dx + (1.0 - fx) * (1 - dx)
        weight_y = fy * dy + (1.0 - fy) * (1 - dy)
        row = image_row + (start + yi * width + xi).to(tl.int64)
        offsets = (row * H + head)[:, None] * C + offs_c[None, :]
        tile_mask = inside[:, None] & mask_c[None, :]
        taps = tl.load(value_ptr + offsets, mask=tile_mask, other=0.0).to(tl.float32)
        if BACKWARD:
            dots = tl.sum(taps * grad_out[None, :], axis=1)  # grad_out . value at the tap
            grad_weight += weight_x * weight_y * dots
            grad_fx += (2 * dx - 1) * weight_y * dots
            grad_fy += (2 * dy - 1) * weight_x * dots
            tl.atomic_add(grad_value_ptr + offsets, (weight * weight_x * weight_y)[:, None] * grad_out[None, :],
                          mask=tile_mask)
        else:
            acc += tl.sum(taps * (weight * weight_x * weight_y)[:, None], axis=0)
    if BACKWARD:
        # d pixel / d location = the level's size.
        tl.store(grad_loc_ptr + point * 2, grad_fx * weight * width.to(tl.float32), mask=mask_p)
        tl.store(grad_loc_ptr + point * 2 + 1, grad_fy * weight * height.to(tl.float32), mask=mask_p)
        tl.store(grad_attn_ptr + point, grad_weight, mask=mask_p)
    else:
        tl.store(out_ptr + program.to(tl.int64) * C + offs_c, acc.to(out_ptr.dtype.element_ty), mask=mask_c)


@functools.lru_cache(maxsize=1)
def _kernel():
    """Compiled at first use (``triton.jit`` returns the interpreter's version under TRITON_INTERPRET=1)."""
    return triton.jit(_sampling_kernel)


def _launch_shape(value, sampling_locations):
    B, S, H, C = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    return B, S, Q, H, C, L, P


def _blocks(points, channels):
    return dict(BLOCK_LP=triton.next_power_of_2(points), BLOCK_C=triton.next_power_of_2(channels))


class _TritonSampling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        B, S, Q, H, C, L, P = _launch_shape(value, sampling_locations)
        value = value.contiguous()
        locations = sampling_locations.contiguous()
        weights = attention_weights.contiguous()
        shapes = spatial_shapes.to(torch.int32).contiguous()
        starts = level_start_index.to(torch.int32).contiguous()
        out = value.new_empty(B, Q, H, C)
        _kernel()[(B * Q * H,)](
            value, shapes, starts, locations, weights, out, out, out, out, out, S, Q, H, C, L * P, P,
            **_blocks(L * P, C), BACKWARD=False)
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        ctx.input_dtypes = value.dtype, sampling_locations.dtype, attention_weights.dtype
        return out.view(B, Q, H * C)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        B, S, Q, H, C, L, P = _launch_shape(value, locations)
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)  # atomics add in float32
        grad_locations = torch.empty(locations.shape, dtype=torch.float32, device=value.device)
        grad_weights = torch.empty(weights.shape, dtype=torch.float32, device=value.device)
        _kernel()[(B * Q * H,)](
            value, shapes, starts, locations, weights, grad_value, grad_out.contiguous(), grad_value, grad_locations,
            grad_weights, S, Q, H, C, L * P, P, **_blocks(L * P, C), BACKWARD=True)
        value_dtype, location_dtype, weight_dtype = ctx.input_dtypes
        return (grad_value.to(value_dtype), None, None, grad_locations.to(location_dtype), grad_weights.to(weight_dtype))


def ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """See the module docstring. ``sampling_locations`` are read in float32 at least (a half-precision
    location is too coarse for a pixel on a 100+ pixel map)."""
    reason = triton_unavailable_reason(value.device)
    if reason is not None:
        raise RuntimeError(f"deformable attention implementation 'triton' cannot run: {reason}")
    if sampling_locations.dtype in (torch.float16, torch.bfloat16):
        sampling_locations = sampling_locations.float()
    return _TritonSampling.apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
