"""fourier_embed forward + backward: eager reference vs torch.compile(reference) vs extension.

The CPU yardstick is 262,144 points x 2 channels x 64 frequencies in fp32: the
extension should be >= 4x faster than the eager reference and >= 1.5x faster than
torch.compile(reference). ``extra_info`` records the bytes a fused implementation must move (read
x, write the output; read grad_out and the saved output, write grad_x), the FLOPs
(:func:`_flops`), the achieved GB/s and GFLOP/s and the share of the session's roofline
(``benchmarks/roofline.py``).
Every benchmark also checks its gradient against the fp64 reference, so the --benchmark-disable
run (CI) is a real test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import roofline
import torch

import inrflow.ops
from inrflow.ops import reference

CHANNELS = 2
NUM_FREQS = 64
CPU_POINTS = 262_144
GPU_POINTS = (262_144, 4_194_304)
SMOKE_POINTS = 2_048
CHECK_POINTS = 16_384

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(points: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(points, CHANNELS, generator=gen) * 2 - 1
    freqs = inrflow.ops.fourier_frequencies(NUM_FREQS, 9)
    grad = torch.randn(points, CHANNELS * 2 * NUM_FREQS, generator=gen)
    return x.to(device).requires_grad_(), freqs.to(device), grad.to(device)


def _bytes_moved(points: int, element_size: int = 4) -> int:
    width = CHANNELS * 2 * NUM_FREQS
    forward = points * (CHANNELS + width)  # read x, write out
    backward = points * (2 * width + CHANNELS)  # read grad_out and out, write grad_x
    return (forward + backward) * element_size


def _flops(points: int) -> int:
    """One multiply x f per (point, channel, frequency) forward; backward f (g_sin cos - g_cos
    sin) summed over the frequencies, 5 FLOPs per term. sin and cos are not counted (their cost
    depends on the implementation), so the compute bound is a lower bound."""
    return points * CHANNELS * NUM_FREQS * (1 + 5)


def _check_gradient(grad_x: torch.Tensor, x: torch.Tensor, freqs: torch.Tensor, grad) -> None:
    """Against the fp64 reference, within the fp32 reference's own error bound: its product
    x*f is rounded (error |x f| 2^-24 in each sin/cos, times f in the gradient term), plus
    sin/cos and accumulation rounding (F + 8 unit roundoffs of each term)."""
    x64 = x.detach().double().requires_grad_()
    out64 = reference.fourier_embed(x64, freqs.double())
    (want,) = torch.autograd.grad(out64, x64, grad.double())
    g = grad.double().abs().reshape(-1, 2, CHANNELS, NUM_FREQS).sum(1)  # |g_sin| + |g_cos|
    f = freqs.double()
    arg = x64.detach().abs()[..., None] * f
    per_term = f * g * (arg + NUM_FREQS + 8) * 2.0**-24
    err = (grad_x.double() - want).abs()
    excess = (err - per_term.sum(-1)).max().item()
    assert excess <= 0.0, f"gradient error above its bound by {excess:.3g}"


def _run_fwd_bwd(
    benchmark,
    fn: Callable,
    synchronize: Callable,
    points: int,
    device: str,
) -> None:
    x, freqs, grad = _inputs(points, device)

    def step() -> torch.Tensor:
        out = fn(x, freqs)
        (grad_x,) = torch.autograd.grad(out, x, grad)
        synchronize(device)
        return grad_x

    step()  # compile / warm up outside the timing
    benchmark.extra_info.update(points=points, channels=CHANNELS, num_freqs=NUM_FREQS)
    grad_x = benchmark.pedantic(step, rounds=9 if device == "cpu" else 30, warmup_rounds=1)
    roofline.record(benchmark, _bytes_moved(points), _flops(points), device)
    rows = slice(0, CHECK_POINTS)  # rows are independent: check a prefix, in fp64 on the CPU
    _check_gradient(grad_x[rows].cpu(), x[rows].cpu(), freqs.cpu(), grad[rows].cpu())


def _embed(make_impl: Callable, impl: str, device: str) -> Callable:
    return make_impl(
        impl, inrflow.ops.fourier_embed, reference.fourier_embed, "fourier_embed", device
    )


@pytest.mark.benchmark(group="fourier_embed fwd+bwd cpu fp32 262144x2x64")
def test_fourier_fwd_bwd_cpu(benchmark, impl, make_impl, synchronize, smoke) -> None:
    points = SMOKE_POINTS if smoke else CPU_POINTS
    _run_fwd_bwd(benchmark, _embed(make_impl, impl, "cpu"), synchronize, points, "cpu")


@requires_cuda
@pytest.mark.parametrize("points", GPU_POINTS)
@pytest.mark.benchmark(group="fourier_embed fwd+bwd cuda fp32")
def test_fourier_fwd_bwd_cuda(benchmark, impl, make_impl, synchronize, smoke, points) -> None:
    benchmark.group = f"fourier_embed fwd+bwd cuda fp32 {points}x2x64"
    points = SMOKE_POINTS if smoke else points
    _run_fwd_bwd(benchmark, _embed(make_impl, impl, "cuda"), synchronize, points, "cuda")
