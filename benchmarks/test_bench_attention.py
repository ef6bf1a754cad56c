"""grouped_cross_attention forward + backward: eager reference vs torch.compile(reference) vs
extension, plus two SDPA baselines: padded SDPA (every group padded to the longest, masked) and,
where every group has the same size, batched SDPA (``q [G, H, 1, D]``, ``k, v [G, H, L, D]`` as
views of the token-major ``[T, H, D]`` tensors: no mask, no padding, what a user writes when the
groups are equal).

CPU yardsticks, fp32:
  (a) ``uniform``: 8 x 1024 groups of 64 keys, Hq = Hkv = 12, D = 64;
  (b) ``zipf``: the same 524,288 tokens over 8192 groups with Zipf(1) sizes (largest ~54k keys);
  (c) ``folded``: the folded-key encoder shape, Hq = 16, Hkv = 1, D = Dv = 1152, 1024 groups of
      64 keys.
Targets: the extension >= 3x faster than the padded-SDPA / eager reference and >= 1.5x faster
than torch.compile(reference) on (a) and (c); (b) costs at most 1.3x (a); on the CPU, (a) >= 3x
faster than batched SDPA and >= 30% of the roofline (``benchmarks/roofline.py``). Those sizes are
timed with ``INRFLOW_BENCH_LARGE=1`` (the eager scatter reference alone takes minutes per call
there); by default the CPU benchmarks use 1/8 of the groups (same group sizes, heads and widths)
so the whole CPU suite stays under 15 minutes, and the CUDA ones always use the full sizes. Padded
SDPA is skipped for (b): padding 8192 groups to the largest one needs hundreds of GB.
The extension's CPU outputs come from its bounded output cache (``inrflow.ops.cpu_output_cache``;
a warm-up call fills it, as the previous step of a training loop would); the extension is also
timed with the cache switched off (``..._no_output_cache_cpu``), paying for fresh output pages on
every call as SDPA does. ``extra_info`` records the bytes a fused implementation must move
(:func:`bytes_moved`), the FLOPs of forward + backward (:func:`flops_fwd_bwd`), the achieved GB/s
and GFLOP/s, the share of the session's roofline and, on CUDA, the achieved bandwidth against the
device's datasheet peak. Each benchmark checks its output and dk on a slice against the fp64
reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import roofline
import torch

import inrflow.ops
from inrflow.ops import reference
from inrflow.ops.attention import attention_flops

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# name -> (groups, keys per group or "zipf", Hq, Hkv, D): the full-size yardsticks
LARGE_SHAPES = {
    "uniform": (8 * 1024, 64, 12, 12, 64),
    "zipf": (8 * 1024, "zipf", 12, 12, 64),
    "folded": (1024, 64, 16, 1, 1152),
}
# the default CPU sizes: 1/8 of the groups
SHAPES = {
    "uniform": (1024, 64, 12, 12, 64),
    "zipf": (1024, "zipf", 12, 12, 64),
    "folded": (128, 64, 16, 1, 1152),
}
SMOKE = {
    "uniform": (64, 16, 4, 4, 16),
    "zipf": (64, "zipf", 4, 4, 16),
    "folded": (16, 16, 4, 1, 72),
}


def group_sizes(groups: int, per_group: int | str, seed: int = 0) -> torch.Tensor:
    """Uniform sizes, or Zipf(1) sizes over the same total tokens (shuffled, all >= 1)."""
    if per_group != "zipf":
        return torch.full((groups,), int(per_group), dtype=torch.int64)
    total = groups * 64
    w = 1.0 / torch.arange(1, groups + 1, dtype=torch.float64)
    sizes = (w / w.sum() * total).floor().long().clamp_min(1)
    sizes[0] += total - sizes.sum()
    gen = torch.Generator().manual_seed(seed)
    return sizes[torch.randperm(groups, generator=gen)]


def make_inputs(shape, device: str, seed: int = 0):
    groups, per_group, hq, hkv, dim = shape
    sizes = group_sizes(groups, per_group, seed)
    tokens = int(sizes.sum())
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(groups, hq, dim, generator=gen).to(device).requires_grad_()
    k = torch.randn(tokens, hkv, dim, generator=gen).to(device).requires_grad_()
    v = torch.randn(tokens, hkv, dim, generator=gen).to(device).requires_grad_()
    offsets = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]).to(torch.int32).to(device)
    grad = torch.randn(groups, hq, dim, generator=gen).to(device)
    return q, k, v, offsets, grad


def bytes_moved(q, k, v, offsets) -> int:
    """Bytes a fused forward + backward must move, each tensor read or written once per pass.

    Forward reads q, k, v and offsets and writes out and lse; backward reads grad_out, q, k, v,
    offsets, out and lse and writes dq, dk and dv. lse is float32 (float64 for fp64 inputs).
    """
    g, hq, _ = q.shape
    el = q.element_size()
    lse = g * hq * (8 if q.dtype == torch.float64 else 4)
    out = g * hq * v.shape[-1] * el
    qkv = (q.numel() + k.numel() + v.numel()) * el
    index = offsets.numel() * offsets.element_size()
    fwd = qkv + index + out + lse
    bwd = 2 * qkv + index + 2 * out + lse
    return fwd + bwd


def flops_fwd_bwd(q, k, v) -> int:
    """Forward ``2 T Hq (D + Dv)`` (scores, weighted sum) and backward twice that (dp, dv, dq,
    dk): the library's own FLOP formula; exp and the backward's recomputation of the scores are
    not counted, so the compute bound is a true lower bound."""
    return 3 * attention_flops(q.shape, k.shape, v.shape)


def peak_bandwidth(device: str) -> float | None:
    """Theoretical DRAM bandwidth (bytes/s) from the device properties, when torch reports it."""
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8  # double data rate


def padded_sdpa(q, k, v, offsets, scale=None):
    """Baseline: pad every group to the longest, masked SDPA with one query per group."""
    groups, hq, dim = q.shape
    hkv = k.shape[1]
    counts = (offsets[1:] - offsets[:-1]).long()
    longest = int(counts.max()) if groups else 0
    seg = torch.repeat_interleave(torch.arange(groups, device=q.device), counts)
    pos = torch.arange(k.shape[0], device=q.device) - offsets[:-1].long()[seg]
    kp = k.new_zeros(groups, longest, hkv, dim).index_put((seg, pos), k)
    vp = v.new_zeros(groups, longest, hkv, v.shape[-1]).index_put((seg, pos), v)
    mask = torch.arange(longest, device=q.device) < counts[:, None]  # [G, L]
    rep = hq // hkv
    kp = kp.transpose(1, 2).repeat_interleave(rep, dim=1)  # [G, Hq, L, D]
    vp = vp.transpose(1, 2).repeat_interleave(rep, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], kp, vp, attn_mask=mask[:, None, None], scale=scale
    )
    return out[:, :, 0].nan_to_num(0.0)


def batched_sdpa(q, k, v, offsets, scale=None):
    """Baseline for equal groups: SDPA over ``[G, H, L, D]`` views of k and v (no copy, no mask).

    The group size comes from ``T / G``; the caller guarantees every group has that size.
    """
    groups, hq, dim = q.shape
    tokens, hkv, _ = k.shape
    per = tokens // groups
    kb = k.view(groups, per, hkv, dim).transpose(1, 2)  # [G, Hkv, L, D]
    vb = v.view(groups, per, hkv, v.shape[-1]).transpose(1, 2)
    if hq != hkv:
        kb = kb.repeat_interleave(hq // hkv, dim=1)
        vb = vb.repeat_interleave(hq // hkv, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(q[:, :, None], kb, vb, scale=scale)
    return out[:, :, 0]


def check(out, dk, q, k, v, offsets, grad, groups: int = 16) -> None:
    """Output and dk of the first groups against the fp64 reference."""
    end = int(offsets[groups])
    off = offsets[: groups + 1].cpu()
    q64, k64, v64 = (t.detach()[:n].cpu().double().requires_grad_() for t, n in
                     ((q, groups), (k, end), (v, end)))  # fmt: skip
    want = reference.grouped_cross_attention(q64, k64, v64, off)
    (want_dk,) = torch.autograd.grad(want, k64, grad[:groups].cpu().double())
    tol = 2e-4 * max(1.0, want.abs().max().item())
    torch.testing.assert_close(out[:groups].detach().cpu().double(), want, rtol=0, atol=tol)
    tol = 2e-4 * max(1.0, want_dk.abs().max().item())
    torch.testing.assert_close(dk[:end].cpu().double(), want_dk, rtol=0, atol=tol)


def run(benchmark, fn: Callable, synchronize: Callable, shape, device: str) -> None:
    q, k, v, offsets, grad = make_inputs(shape, device)

    def step():
        out = fn(q, k, v, offsets)
        _, dk, _ = torch.autograd.grad(out, (q, k, v), grad)
        synchronize(device)
        return out, dk

    step()  # compile / warm up outside the timing
    benchmark.extra_info.update(
        groups=q.shape[0], tokens=k.shape[0], heads=(q.shape[1], k.shape[1]), dim=q.shape[2],
        largest_group=int((offsets[1:] - offsets[:-1]).max()),
    )  # fmt: skip
    out, dk = benchmark.pedantic(step, rounds=3 if device == "cpu" else 20, warmup_rounds=1)
    nbytes = bytes_moved(q, k, v, offsets)
    roofline.record(benchmark, nbytes, flops_fwd_bwd(q, k, v), device)
    timed = not benchmark.disabled and benchmark.stats is not None
    if timed and device == "cuda" and (peak := peak_bandwidth(device)):
        median = benchmark.stats.stats.median
        benchmark.extra_info["fraction of peak bandwidth"] = round(nbytes / median / peak, 3)
    check(out, dk, q, k, v, offsets, grad)


def attention(make_impl: Callable, impl: str, device: str) -> Callable:
    return make_impl(
        impl,
        inrflow.ops.grouped_cross_attention,
        reference.grouped_cross_attention,
        "grouped_cross_attention",
        device,
    )


def _cpu_shape(name: str, smoke: bool, large: bool) -> tuple:
    return SMOKE[name] if smoke else (LARGE_SHAPES if large else SHAPES)[name]


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.benchmark(group="grouped_cross_attention fwd+bwd cpu fp32")
def test_attention_fwd_bwd_cpu(benchmark, impl, make_impl, synchronize, smoke, large, name):
    shape = _cpu_shape(name, smoke, large)
    benchmark.group = f"grouped_cross_attention fwd+bwd cpu fp32 {name} {shape[0]} groups"
    run(benchmark, attention(make_impl, impl, "cpu"), synchronize, shape, "cpu")


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.benchmark(group="grouped_cross_attention fwd+bwd cpu fp32")
def test_attention_extension_no_output_cache_cpu(
    benchmark, make_impl, synchronize, smoke, large, name
) -> None:
    """The extension with its output cache off: fresh output memory on every call."""
    shape = _cpu_shape(name, smoke, large)
    benchmark.group = f"grouped_cross_attention fwd+bwd cpu fp32 {name} {shape[0]} groups"
    fn = attention(make_impl, "extension", "cpu")
    with inrflow.ops.cpu_output_cache(0):
        run(benchmark, fn, synchronize, shape, "cpu")


@pytest.mark.parametrize("name", ["uniform", "folded"])
@pytest.mark.benchmark(group="grouped_cross_attention fwd+bwd cpu fp32")
def test_attention_padded_sdpa_cpu(benchmark, synchronize, smoke, large, name) -> None:
    shape = _cpu_shape(name, smoke, large)
    benchmark.group = f"grouped_cross_attention fwd+bwd cpu fp32 {name} {shape[0]} groups"
    run(benchmark, padded_sdpa, synchronize, shape, "cpu")


@pytest.mark.parametrize("name", ["uniform", "folded"])
@pytest.mark.benchmark(group="grouped_cross_attention fwd+bwd cpu fp32")
def test_attention_batched_sdpa_cpu(benchmark, synchronize, smoke, large, name) -> None:
    shape = _cpu_shape(name, smoke, large)
    benchmark.group = f"grouped_cross_attention fwd+bwd cpu fp32 {name} {shape[0]} groups"
    run(benchmark, batched_sdpa, synchronize, shape, "cpu")


@requires_cuda
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.benchmark(group="grouped_cross_attention fwd+bwd cuda fp32")
def test_attention_fwd_bwd_cuda(benchmark, impl, make_impl, synchronize, smoke, name) -> None:
    benchmark.group = f"grouped_cross_attention fwd+bwd cuda fp32 {name}"
    shape = SMOKE[name] if smoke else LARGE_SHAPES[name]
    run(benchmark, attention(make_impl, impl, "cuda"), synchronize, shape, "cuda")


@requires_cuda
@pytest.mark.parametrize("name", ["uniform", "folded"])
@pytest.mark.benchmark(group="grouped_cross_attention fwd+bwd cuda fp32")
def test_attention_padded_sdpa_cuda(benchmark, synchronize, smoke, name) -> None:
    benchmark.group = f"grouped_cross_attention fwd+bwd cuda fp32 {name}"
    shape = SMOKE[name] if smoke else LARGE_SHAPES[name]
    run(benchmark, padded_sdpa, synchronize, shape, "cuda")


def test_byte_and_flop_counts_by_hand() -> None:
    # 2 groups of 3 keys, Hq = 4, Hkv = 2, D = 8, Dv = 5, fp32 with int32 offsets
    q, k, v = torch.zeros(2, 4, 8), torch.zeros(6, 2, 8), torch.zeros(6, 2, 5)
    offsets = torch.tensor([0, 3, 6], dtype=torch.int32)
    q_b, k_b, v_b, out_b, lse_b, off_b = 2 * 4 * 8 * 4, 6 * 2 * 8 * 4, 6 * 2 * 5 * 4, 40 * 4, 32, 12
    fwd = q_b + k_b + v_b + off_b + out_b + lse_b
    bwd = out_b + q_b + k_b + v_b + off_b + out_b + lse_b + q_b + k_b + v_b
    assert bytes_moved(q, k, v, offsets) == fwd + bwd
    assert flops_fwd_bwd(q, k, v) == 3 * 2 * 6 * 4 * (8 + 5)


def test_batched_sdpa_matches_the_reference() -> None:
    q, k, v, offsets, _ = make_inputs((5, 7, 4, 2, 8), "cpu")
    want = reference.grouped_cross_attention(q, k, v, offsets)
    torch.testing.assert_close(batched_sdpa(q, k, v, offsets), want, rtol=1e-5, atol=1e-5)


def test_zipf_sizes_cover_the_same_tokens() -> None:
    sizes = group_sizes(8192, "zipf")
    assert int(sizes.sum()) == 8192 * 64 and int(sizes.min()) >= 1
    assert int(sizes.max()) > 40 * 64  # one group holds a large share
    assert math.isclose(float(sizes.float().mean()), 64.0)
