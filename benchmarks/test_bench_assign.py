"""nearest_assign and group_layout: eager composition vs torch.compile of it vs extension.

The CPU yardstick is B = 8 samples x N = 65,536 points x K = 1,024 random centres, d = 2
and d = 3, fp32:
* nearest: the extension (``inrflow.ops.nearest_assign``, validation included) >= 10x faster than
  the eager ``torch.cdist(points, centers).argmin(-1)`` composition and >= 3x faster than
  ``torch.compile`` of it;
* group_layout: the extension >= 3x faster than ``argsort(stable) + bincount + cumsum``.

``extra_info["peak_extra_bytes"]`` is the peak memory a call adds on top of its inputs:
* CPU: the rise of the process's resident-set high-water mark. Free heap pages are first returned
  to the OS (glibc ``malloc_trim(0)``) so that the call's allocations fault in fresh pages, then
  ``VmHWM`` is reset to the current RSS by writing ``5`` to ``/proc/self/clear_refs`` (Linux),
  the call runs, and the new ``VmHWM`` minus the RSS before the call is reported. It counts
  pages, so it is accurate to a few KiB per allocation. ``None`` where /proc is unavailable.
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus the memory
  allocated before the call.
``extra_info`` also holds the bytes (inputs read and outputs written once), FLOPs (``2 d`` per
(point, centre) pair for nearest_assign, the GEMM formulation's count; none for group_layout),
the achieved GB/s and GFLOP/s and the share of the session's roofline (``benchmarks/roofline.py``).
Every benchmark also checks its result against the reference (ties aside for cdist, see below),
so the --benchmark-disable run (CI) is a real test.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import roofline
import torch

import inrflow.ops
from inrflow.ops import reference

BATCH, POINTS, CENTERS = 8, 65_536, 1_024
SMOKE = (2, 512, 16)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
_compiled: dict[str, Callable] = {}


def cdist_argmin(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """The obvious composition: materialises the B x N x K distance matrix."""
    return torch.cdist(points, centers).argmin(-1)


def argsort_layout(assign: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The obvious composition: stable argsort per row, bincount of the global groups, cumsum."""
    perm = torch.argsort(assign, dim=-1, stable=True)
    base = torch.arange(assign.shape[0], device=assign.device)[:, None] * num_groups
    counts = torch.bincount((assign + base).flatten(), minlength=assign.shape[0] * num_groups)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)
    return perm, offsets


def _pick(kind: str, op: str, eager: Callable, public: Callable, device: str) -> Callable:
    if kind == "eager":
        return eager
    if kind == "compile":
        if op not in _compiled:
            _compiled[op] = torch.compile(eager, dynamic=False)
        return _compiled[op]
    if not inrflow.ops.extension_available(device, op=op):
        pytest.skip(f"inrflow._C has no {device} kernel for {op}")
    return public


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def peak_extra_bytes(fn: Callable[[], object], device: str) -> int | None:
    """Peak memory one call of ``fn`` adds (see the module docstring for the method)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del out
        return peak
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
        rss = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        out = fn()
        peak = (_status_kib("VmHWM") - rss) * 1024
    except (OSError, AttributeError):
        return None
    del out
    return max(peak, 0)


def _sizes(smoke: bool) -> tuple[int, int, int]:
    return SMOKE if smoke else (BATCH, POINTS, CENTERS)


def _bench(benchmark, fn: Callable[[], object], device: str, smoke: bool) -> object:
    def step() -> object:
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    step()  # compile / warm up outside the timing
    benchmark.extra_info["peak_extra_bytes"] = peak_extra_bytes(step, device)
    if smoke:
        return benchmark(step)
    return benchmark.pedantic(step, rounds=3, iterations=1)


def run_nearest(benchmark, impl: str, d: int, device: str, smoke: bool) -> None:
    batch, n, k = _sizes(smoke)
    gen = torch.Generator().manual_seed(d)
    points = torch.rand(batch, n, d, generator=gen).to(device)
    centers = torch.rand(batch, k, d, generator=gen).to(device)
    fn = _pick(impl, "nearest_assign", cdist_argmin, inrflow.ops.nearest_assign, device)
    benchmark.extra_info.update(batch=batch, points=n, centers=k, d=d, pairs=batch * n * k)
    out = _bench(benchmark, lambda: fn(points, centers), device, smoke)
    nbytes = points.nbytes + centers.nbytes + out.nbytes
    roofline.record(benchmark, nbytes, 2 * d * batch * n * k, device)
    expect = reference.nearest_assign(points, centers)
    if impl == "extension":
        assert torch.equal(out, expect)
    else:
        # cdist's matmul formulation rounds differently: near-ties may pick another centre, but
        # never a farther one beyond fp32 rounding of the distances
        best = (points - centers.gather(1, expect[..., None].expand(-1, -1, d))).pow(2).sum(-1)
        got = (points - centers.gather(1, out[..., None].expand(-1, -1, d))).pow(2).sum(-1)
        assert (got - best).abs().max().item() <= 1e-5


def run_layout(benchmark, impl: str, device: str, smoke: bool) -> None:
    batch, n, k = _sizes(smoke)
    gen = torch.Generator().manual_seed(0)
    assign = torch.randint(0, k, (batch, n), generator=gen).to(device)
    fn = _pick(impl, "group_layout", argsort_layout, inrflow.ops.group_layout, device)
    benchmark.extra_info.update(batch=batch, points=n, groups=k)
    perm, offsets = _bench(benchmark, lambda: fn(assign, k), device, smoke)
    roofline.record(benchmark, assign.nbytes + perm.nbytes + offsets.nbytes, 0, device)
    p_ref, o_ref = reference.group_layout(assign, k)
    assert torch.equal(perm, p_ref) and torch.equal(offsets, o_ref)


@pytest.mark.parametrize("d", [2, 3])
def test_bench_nearest_assign_cpu(benchmark, impl: str, d: int, smoke: bool) -> None:
    benchmark.group = f"nearest_assign cpu d={d}"
    run_nearest(benchmark, impl, d, "cpu", smoke)


def test_bench_group_layout_cpu(benchmark, impl: str, smoke: bool) -> None:
    benchmark.group = "group_layout cpu"
    run_layout(benchmark, impl, "cpu", smoke)


@requires_cuda
@pytest.mark.parametrize("d", [2, 3])
def test_bench_nearest_assign_cuda(benchmark, impl: str, d: int, smoke: bool) -> None:
    benchmark.group = f"nearest_assign cuda d={d}"
    run_nearest(benchmark, impl, d, "cuda", smoke)


@requires_cuda
def test_bench_group_layout_cuda(benchmark, impl: str, smoke: bool) -> None:
    benchmark.group = "group_layout cuda"
    run_layout(benchmark, impl, "cuda", smoke)
