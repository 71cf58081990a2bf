"""The Triton deformable-attention kernel: values and all three gradients against the naive
reference and ``grid_sample`` (points off the map, 1 x N and 1 x 1 levels, padded values, half
precision), and how the module chooses its implementation.

On a machine without a GPU the kernel runs in Triton's interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1 before triton is imported); with a GPU the same tests run the compiled kernel
on CUDA (``tools/gpu_check.sh``)."""
import logging

import pytest
import torch
from test_ms_deform_attn import SHAPES, random_inputs

from detr_plus.layers import MultiScaleDeformableAttention, ms_deform_attn_grid_sample, ms_deform_attn_naive
from detr_plus.layers import ms_deform_attn as msda
from detr_plus.layers.ms_deform_attn_triton import ms_deform_attn_triton, triton_unavailable_reason

DEVICES = [device for device in ("cpu", "cuda") if (device == "cpu" or torch.cuda.is_available())
           and triton_unavailable_reason(torch.device(device)) is None]
pytestmark = pytest.mark.skipif(not DEVICES, reason="Triton runs on neither CPU (interpreter) nor CUDA here")


def on(device, *tensors):
    return [t.to(device).requires_grad_() for t in tensors]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spread", [(-0.2, 1.2), (-1.5, 2.5)], ids=["near", "far_off_the_map"])
def test_values_and_gradients_match_naive_and_grid_sample(device, spread):
    value, shapes, starts, locations, weights = random_inputs(SHAPES, dtype=torch.float32, spread=spread, channels=5)
    assert ((locations < -0.5) | (locations > 1.5)).any() or spread[0] > -1, "far case must reach beyond the taps"
    inputs = on(device, value, locations, weights)
    shapes, starts = shapes.to(device), starts.to(device)
    expected = ms_deform_attn_naive(value.double(), shapes.cpu(), starts.cpu(), locations.double(), weights.double())
    actual = ms_deform_attn_triton(inputs[0], shapes, starts, inputs[1], inputs[2])
    assert actual.shape == (2, 4, 2 * 5) and actual.dtype == torch.float32
    torch.testing.assert_close(actual.cpu().double(), expected, rtol=1e-5, atol=1e-5)
    assert expected.abs().max() > 0.1

    reference_inputs = on("cpu", value, locations, weights)
    reference = ms_deform_attn_grid_sample(reference_inputs[0], shapes.cpu(), starts.cpu(), *reference_inputs[1:])
    grad_out = torch.randn_like(reference)
    expected_grads = torch.autograd.grad(reference, reference_inputs, grad_out)
    actual_grads = torch.autograd.grad(actual, inputs, grad_out.to(device))
    for what, e, a in zip(("value", "sampling_locations", "attention_weights"), expected_grads, actual_grads):
        assert a.shape == e.shape and a.dtype == e.dtype, what
        assert e.abs().max() > 0, what
        torch.testing.assert_close(a.cpu(), e, rtol=1e-4, atol=1e-5, msg=lambda m: f"grad wrt {what}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_points_on_pixel_centres_and_far_away_by_hand(device):
    """One 2 x 3 level, value[pixel] = pixel index. A point on pixel (1, 0)'s centre reads 1 with
    grid_sample's one-sided slopes (d/dx = (v(2, 0) - v(1, 0)) * W, d/dy = (v(1, 1) - v(1, 0)) * H);
    a point 3 map-widths away reads 0 and gets no gradient at all."""
    shapes = torch.tensor([[2, 3]], device=device)
    starts = torch.zeros(1, dtype=torch.long, device=device)
    value = torch.arange(6.0, device=device).view(1, 6, 1, 1).requires_grad_()
    centre = [(1 + 0.5) / 3, (0 + 0.5) / 2]
    locations = torch.tensor([centre, [3.0, -3.0]], device=device).view(1, 2, 1, 1, 1, 2).requires_grad_()
    weights = torch.ones(1, 2, 1, 1, 1, device=device, requires_grad=True)
    out = ms_deform_attn_triton(value, shapes, starts, locations, weights)
    assert out.flatten().tolist() == [1.0, 0.0]
    grad_value, grad_locations, grad_weights = torch.autograd.grad(out.sum(), (value, locations, weights))
    assert grad_value.flatten().tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert grad_locations.flatten().tolist() == [pytest.approx((2 - 1) * 3), pytest.approx((4 - 1) * 2), 0.0, 0.0]
    assert grad_weights.flatten().tolist() == [1.0, 0.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(device, dtype):
    """Half-precision value and weights: the result is the float32 result of the rounded inputs,
    rounded once (accumulation in float32), in the value's dtype; gradients in the inputs' dtypes."""
    value, shapes, starts, locations, weights = random_inputs(SHAPES, dtype=torch.float32, channels=4)
    value, weights = value.to(dtype), weights.to(dtype)
    inputs = on(device, value, locations, weights)
    out = ms_deform_attn_triton(inputs[0], shapes.to(device), starts.to(device), inputs[1], inputs[2])
    exact = ms_deform_attn_naive(value.double(), shapes, starts, locations.double(), weights.double())
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu().double(), exact, rtol=0, atol=torch.finfo(dtype).eps * exact.abs().max().item())
    grads = torch.autograd.grad(out.float().sum(), inputs)
    assert [g.dtype for g in grads] == [dtype, torch.float32, dtype]


@pytest.mark.parametrize("device", DEVICES)
def test_module_with_padding_mask_equals_bilinear_gather(device):
    """The module, padded values masked out, Triton vs bilinear_gather: same output and gradients."""
    torch.manual_seed(0)
    shapes = torch.tensor([[4, 5], [2, 3], [1, 2]], device=device)
    starts = torch.tensor([0, 20, 26], device=device)
    modules = {name: MultiScaleDeformableAttention(16, 2, 3, 2, implementation=name).to(device)
               for name in ("triton", "bilinear_gather")}
    modules["triton"].load_state_dict(modules["bilinear_gather"].state_dict())
    query = torch.randn(2, 5, 16, device=device)
    value = torch.randn(2, 28, 16, device=device)
    padding = torch.zeros(2, 28, dtype=torch.bool, device=device)
    padding[1, 10:20] = True
    reference = torch.rand(2, 5, 3, 2, device=device)
    results = {}
    for name, module in modules.items():
        out = module(query, reference, value, shapes, starts, padding)
        results[name] = (out, torch.autograd.grad(out.square().sum(), list(module.parameters())))
    torch.testing.assert_close(results["triton"][0], results["bilinear_gather"][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results["triton"][1], results["bilinear_gather"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_auto_falls_back_to_bilinear_gather_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setattr(msda, "_logged_choices", set())
    cuda = torch.device("cuda")
    monkeypatch.setattr(msda, "triton_unavailable_reason", lambda device: "triton is not installed")
    with caplog.at_level(logging.INFO, logger=msda.__name__):
        assert msda.resolve_implementation("auto", cuda, needs_grad=True) == "bilinear_gather"
        assert msda.resolve_implementation("auto", cuda, needs_grad=True) == "bilinear_gather"
    assert len(caplog.records) == 1 and "uses 'bilinear_gather' (triton is not installed)" in caplog.records[0].message
    monkeypatch.setattr(msda, "triton_unavailable_reason", lambda device: None)
    assert msda.resolve_implementation("auto", cuda, needs_grad=True) == "triton"
    assert msda.resolve_implementation("auto", torch.device("cpu"), needs_grad=True) == "bilinear_gather"
    assert msda.resolve_implementation("grid_sample", cuda, needs_grad=True) == "grid_sample"


def test_deterministic_mode_trains_without_atomics(monkeypatch):
    monkeypatch.setattr(msda, "triton_unavailable_reason", lambda device: None)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert msda.resolve_implementation("triton", torch.device("cuda"), needs_grad=True) == "bilinear_gather"
        assert msda.resolve_implementation("auto", torch.device("cuda"), needs_grad=True) == "bilinear_gather"
        assert msda.resolve_implementation("triton", torch.device("cuda"), needs_grad=False) == "triton"  # no backward: no atomics
    finally:
        torch.use_deterministic_algorithms(previous)


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    value, shapes, starts, locations, weights = random_inputs([(2, 2)], dtype=torch.float32)
    with pytest.raises(RuntimeError, match="'triton' cannot run: CPU tensors need Triton's interpreter"):
        ms_deform_attn_triton(value, shapes, starts, locations, weights)
    with pytest.raises(ValueError, match="use one of .*'auto'.*'triton'"):
        MultiScaleDeformableAttention(16, 2, 1, 1, implementation="cuda_ext")


@pytest.mark.parametrize("device", DEVICES)
def test_first_launch_check(device, monkeypatch):
    """"auto" takes Triton on a GPU only when one tiny launch works there; a failing one is the reason."""
    from detr_plus.layers import ms_deform_attn_triton as kernel

    assert kernel._first_launch_failure.__wrapped__(device) is None

    def broken(*args):
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(kernel._TritonSampling, "apply", broken)
    assert "does not compile or run here (RuntimeError: PTX assembly failed)" in kernel._first_launch_failure.__wrapped__(device)
