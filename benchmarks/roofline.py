"""A roofline measured by the benchmark session itself, and each kernel's share of it.

A kernel that must move ``B`` bytes and do ``F`` floating-point operations cannot take less than
``max(B / bandwidth, F / flop_rate)`` on a machine; its *roofline share* is that lower bound over
its measured time (1.0 is the roofline). Both rates are measured in the same process, with the
same thread count, right after each benchmark's timed rounds (on a shared machine what it
delivers drifts within minutes: a rate measured once per session gave shares above 100%), so the
share says how much of what this machine delivered at that moment a kernel uses, not how it
compares with a datasheet:

* bandwidth: a copy of a 256 MiB fp32 tensor into a preallocated one (no page faults), counted
  as read + write, median of 5;
* compute: an fp32 square matmul (2048 on the CPU, 8192 on a GPU) through torch (MKL / oneDNN /
  cuBLAS), ``2 n^3`` FLOPs, median of 3.

:func:`record` measures them (:func:`machine_roofline`) and stores the achieved GB/s, GFLOP/s,
bound and share in a benchmark's ``extra_info``, and keeps a row for the table that
``benchmarks/conftest.py`` prints at the end of the session.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

COPY_BYTES = 256 * 2**20
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}

# rows of the end-of-session table: (benchmark name, fields)
ROWS: list[tuple[str, dict[str, float | str]]] = []


@dataclass(frozen=True)
class Roofline:
    """Measured peak rates of one device: bytes/s of a large copy and FLOP/s of a large GEMM."""

    device: str
    bandwidth: float
    flop_rate: float

    def lower_bound(self, nbytes: float, flops: float) -> float:
        """Seconds a kernel moving ``nbytes`` and doing ``flops`` needs at least."""
        return max(nbytes / self.bandwidth, flops / self.flop_rate)


def _median_seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    fn()  # warm up (and fault the output pages in)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_roofline(device: str = "cpu") -> Roofline:
    """Copy bandwidth and GEMM FLOP rate of ``device`` ("cpu" or "cuda"), measured now."""
    kind = torch.device(device).type
    if kind not in GEMM_SIZE:
        raise ValueError(f"machine_roofline: device must be cpu or cuda, got {device!r}")
    n = GEMM_SIZE[kind]
    return Roofline(kind, bandwidth=_copy_rate(kind), flop_rate=_gemm_rate(kind, n))


def _copy_rate(device: str) -> float:
    src = torch.ones(COPY_BYTES // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * COPY_BYTES / _median_seconds(lambda: dst.copy_(src), device, repeats=5)


def _gemm_rate(device: str, n: int) -> float:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    return 2 * n**3 / _median_seconds(lambda: a @ b, device, repeats=3)


def record(benchmark, nbytes: int, flops: int, device: str = "cpu") -> None:
    """Put bytes, FLOPs, achieved rates and the roofline share of the median time into
    ``benchmark.extra_info`` and the end-of-session table (rates only when timing ran)."""
    benchmark.extra_info.update(bytes=int(nbytes), flops=int(flops))
    if benchmark.disabled or benchmark.stats is None:
        return
    roof = machine_roofline(torch.device(device).type)
    median = benchmark.stats.stats.median
    bound = roof.lower_bound(nbytes, flops)
    fields: dict[str, float | str] = {
        "median_s": median,
        "GB/s": nbytes / median / 1e9,
        "GFLOP/s": flops / median / 1e9,
        "copy GB/s": roof.bandwidth / 1e9,
        "gemm GFLOP/s": roof.flop_rate / 1e9,
        "bound_s": bound,
        "bound by": "memory" if nbytes / roof.bandwidth >= flops / roof.flop_rate else "compute",
        "roofline share": bound / median,
    }
    benchmark.extra_info.update(
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}
    )
    ROWS.append((benchmark.name, fields))


def table() -> list[str]:
    """The recorded rows as aligned text lines (empty when nothing was timed)."""
    if not ROWS:
        return []
    width = max(len(name) for name, _ in ROWS)
    lines = [
        f"{'benchmark':<{width}}  {'median s':>9}  {'GB/s':>7}  {'GFLOP/s':>8}  {'copy GB/s':>9}  "
        f"{'GEMM GFLOP/s':>12}  {'bound s':>8}  {'by':>7}  {'share':>6}"
    ]
    for name, f in ROWS:
        lines.append(
            f"{name:<{width}}  {f['median_s']:9.4f}  {f['GB/s']:7.2f}  {f['GFLOP/s']:8.2f}  "
            f"{f['copy GB/s']:9.2f}  {f['gemm GFLOP/s']:12.1f}  {f['bound_s']:8.4f}  "
            f"{f['bound by']:>7}  {f['roofline share']:6.1%}"
        )
    return lines
