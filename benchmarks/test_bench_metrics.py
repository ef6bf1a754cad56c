"""Pairwise Chamfer matrices on the CPU: inrflow's bounded-memory searches vs the dense approach.

The dense approach is the one of PointFlow and the official INRFlow evaluation: for every sample
cloud, expand it against chunks of 128 reference clouds and build, with batched matrix products,
the full ``x x^T``, ``y y^T`` and ``x y^T`` (B x N x N each) and the squared-distance tensor,
then take minima along both axes. inrflow's ``pairwise_chamfer`` is timed with its CPU default
(k-d trees, exact) and with its ``matmul`` backend (blocks of at most ``chunk_bytes``).

The yardstick is the full pairwise Chamfer matrix of 256 sample x 256 reference clouds of 2,048
points each: time and peak resident memory of inrflow's default vs the dense approach
(``INRFLOW_BENCH_LARGE=1``; about 25 minutes on 2 cores). The dense approach takes tens of minutes
at that size on a 2-core machine, so every implementation is timed on the same ``rows`` sample
clouds against all references (``rows x clouds`` pairs, the per-row work of the full matrix);
``extra_info`` holds the measured time, the full-matrix estimate (x clouds / rows; every
implementation's cost is linear in the rows), and the peak resident memory above the baseline
during the call. ``test_pairwise_chamfer_full_matrix`` then measures inrflow's default on the whole
matrix. By default (so the whole CPU suite stays under 15 minutes) the clouds keep their 2,048
points but there are 64 of them and 2 rows; under ``--benchmark-disable`` (CI) everything runs once
at a small size.

Run: ``pytest benchmarks/test_bench_metrics.py --benchmark-only``.
Threads: one torch thread and one k-d tree worker for every implementation, so the comparison
is per core and does not depend on the machine's load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

from inrflow.metrics import pairwise_chamfer

pytest.importorskip("scipy")

LARGE = {"clouds": 256, "points": 2048, "rows": 8}  # the full pairwise-Chamfer yardstick
DEFAULT = {"clouds": 64, "points": 2048, "rows": 2}
SMOKE = {"clouds": 12, "points": 128, "rows": 3}
DENSE_CHUNK = 128  # reference clouds per dense step, as in the official evaluation


def surface_clouds(n: int, points: int, seed: int) -> torch.Tensor:
    """Points on random ellipsoid surfaces in [-0.5, 0.5]^3 (shape-like, not uniform noise)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, points, 3, generator=gen)
    v = v / v.norm(dim=-1, keepdim=True)
    axes = 0.2 + 0.3 * torch.rand(n, 1, 3, generator=gen)
    return (v * axes).contiguous()


def dense_pairwise_chamfer(samples: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """The dense batched-matmul approach (B x N x N tensors per chunk of reference clouds)."""
    out = torch.empty(samples.shape[0], refs.shape[0], dtype=torch.float64)
    idx = torch.arange(samples.shape[1])
    for i in range(samples.shape[0]):
        for j0 in range(0, refs.shape[0], DENSE_CHUNK):
            y = refs[j0 : j0 + DENSE_CHUNK]
            x = samples[i : i + 1].expand(y.shape[0], -1, -1).contiguous()
            xx = torch.bmm(x, x.transpose(2, 1))
            yy = torch.bmm(y, y.transpose(2, 1))
            zz = torch.bmm(x, y.transpose(2, 1))
            rx = xx[:, idx, idx].unsqueeze(1).expand_as(xx)
            ry = yy[:, idx, idx].unsqueeze(1).expand_as(yy)
            p = rx.transpose(2, 1) + ry - 2 * zz
            cd = p.min(1)[0].mean(1) + p.min(2)[0].mean(1)
            out[i, j0 : j0 + y.shape[0]] = cd.double()
    return out


class PeakRSS:
    """Peak resident memory of this process above its level at entry (sampled every ms)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.peak = 0
        self.base = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IMPLS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "inrflow-kdtree": lambda s, r: pairwise_chamfer(s, r, backend="kdtree"),
    "inrflow-matmul": lambda s, r: pairwise_chamfer(s, r, backend="matmul"),
    "dense-bmm": dense_pairwise_chamfer,
}


def _size(smoke: bool, large: bool) -> dict[str, int]:
    return SMOKE if smoke else LARGE if large else DEFAULT


@pytest.mark.benchmark(group="pairwise-chamfer rows x refs (CPU)")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_pairwise_chamfer_rows(benchmark, smoke: bool, large: bool, impl: str, one_thread):
    size = _size(smoke, large)
    benchmark.group = (
        f"pairwise-chamfer {size['rows']} rows x {size['clouds']} refs x {size['points']} points"
    )
    refs = surface_clouds(size["clouds"], size["points"], seed=0)
    samples = surface_clouds(size["rows"], size["points"], seed=1)
    fn = IMPLS[impl]
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        got = benchmark.pedantic(fn, args=(samples, refs), rounds=1, iterations=1)
        elapsed = time.perf_counter() - t0
    benchmark.extra_info.update(
        pairs=size["rows"] * size["clouds"],
        seconds=round(elapsed, 3),
        full_matrix_estimate_s=round(elapsed * size["clouds"] / size["rows"], 1),
        peak_rss_above_baseline_mib=round(mem.mib, 1),
    )
    # All three compute the same matrix (float32 expansion in the dense one: loose tolerance).
    check = pairwise_chamfer(samples[:2], refs[:4], backend="kdtree")
    torch.testing.assert_close(got[:2, :4], check, rtol=1e-3, atol=1e-6)


@pytest.mark.benchmark(group="pairwise-chamfer full matrix (CPU)")
def test_pairwise_chamfer_full_matrix(benchmark, smoke: bool, large: bool, one_thread) -> None:
    size = _size(smoke, large)
    n, p = size["clouds"], size["points"]
    benchmark.group = f"pairwise-chamfer full {n} x {n} x {p} (CPU)"
    refs = surface_clouds(size["clouds"], size["points"], seed=0)
    samples = surface_clouds(size["clouds"], size["points"], seed=1)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        got = benchmark.pedantic(pairwise_chamfer, args=(samples, refs), rounds=1, iterations=1)
        elapsed = time.perf_counter() - t0
    benchmark.extra_info.update(
        seconds=round(elapsed, 3), peak_rss_above_baseline_mib=round(mem.mib, 1)
    )
    assert got.shape == (size["clouds"], size["clouds"]) and torch.isfinite(got).all()
