"""Point-cloud metrics: Chamfer and EMD against brute force, MMD/COV/1-NNA on constructed sets."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from inrflow.metrics import (
    chamfer_distance,
    emd,
    mmd_cov,
    normalize_point_clouds,
    one_nna,
    pairwise_chamfer,
    pairwise_emd,
    point_cloud_metrics,
    read_ply,
)
from inrflow.metrics.io import load_point_clouds
from inrflow.metrics.pointcloud import emd_method_name

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ("kdtree", "matmul", "ops")


def brute_chamfer(x: torch.Tensor, y: torch.Tensor) -> float:
    """Every pair, float64, plain loops over the definition."""
    x, y = x.double(), y.double()
    d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return float(d.min(1).values.mean() + d.min(0).values.mean())


def brute_emd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Minimum over all permutations of the mean matched Euclidean distance."""
    cost = torch.cdist(x.double(), y.double()).numpy()
    n = cost.shape[0]
    return min(cost[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chamfer_equals_brute_force(backend: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 300, 3, generator=gen) * 2 - 1
    y = torch.rand(4, 211, 3, generator=gen) * 2 - 1  # unequal sizes are fine for CD
    got = chamfer_distance(x, y, backend=backend)
    expected = torch.tensor([brute_chamfer(x[i], y[i]) for i in range(4)], dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    assert chamfer_distance(x, x, backend=backend).abs().max() == 0


def test_chamfer_float64_far_from_the_origin() -> None:
    # The matmul backend expands |x - y|^2; it centres the clouds and recomputes the chosen
    # pairs exactly, so a large common offset does not cost precision.
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 200, 3, generator=gen, dtype=torch.float64) + 1000.0
    y = torch.rand(2, 150, 3, generator=gen, dtype=torch.float64) + 1000.0
    expected = torch.tensor([brute_chamfer(x[i], y[i]) for i in range(2)], dtype=torch.float64)
    for backend in BACKENDS:
        torch.testing.assert_close(
            chamfer_distance(x, y, backend=backend), expected, rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_chamfer_matches_brute_force_and_chunks(backend: str) -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(5, 64, 3, generator=gen)
    b = torch.rand(7, 64, 3, generator=gen)
    expected = torch.tensor(
        [[brute_chamfer(a[i], b[j]) for j in range(7)] for i in range(5)], dtype=torch.float64
    )
    # A tiny work budget forces many blocks (and, for matmul, the per-row fallback).
    for chunk_bytes in (1 << 26, 64 * 64 * 4 * 3, 1000):
        got = pairwise_chamfer(a, b, backend=backend, chunk_bytes=chunk_bytes)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    sym = pairwise_chamfer(a, backend=backend, chunk_bytes=64 * 64 * 4 * 2)
    expected_sym = torch.tensor(
        [[brute_chamfer(a[i], a[j]) for j in range(5)] for i in range(5)], dtype=torch.float64
    )
    torch.testing.assert_close(sym, expected_sym, rtol=1e-12, atol=1e-15)
    assert torch.equal(sym, sym.T) and torch.all(sym.diagonal() == 0)


def test_exact_emd_equals_brute_force_permutations() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 6, 3, generator=gen)
    y = torch.rand(6, 6, 3, generator=gen)
    got = emd(x, y)  # exact=True by default
    expected = torch.tensor([brute_emd(x[i], y[i]) for i in range(6)], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    # a permuted copy is at distance 0
    perm = torch.randperm(6, generator=gen)
    assert float(emd(x, x[:, perm]).abs().max()) < 1e-15
    with pytest.raises(ValueError, match="equal size"):
        emd(x, y[:, :5])


def test_auction_emd_is_a_tight_upper_bound() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(6, 96, 3, generator=gen)
    y = torch.rand(6, 96, 3, generator=gen) + 0.1
    exact = emd(x, y, exact=True)
    diameter = torch.cdist(x.double(), y.double()).amax((1, 2))
    eps = 1e-3
    approx = emd(x, y, exact=False, eps=eps)
    # a valid matching: never below the optimum; finished auction: within eps x diameter
    assert torch.all(approx >= exact - 1e-12)
    assert torch.all(approx <= exact + eps * diameter + 1e-12)
    # Cut short, the leftovers are matched optimally among themselves: still a valid matching.
    cut = emd(x, y, exact=False, max_rounds=5)
    assert torch.all(cut >= exact - 1e-12)
    # Identical clouds (ties everywhere) still give an exact 0 within the bound.
    same = emd(x, x, exact=False)
    assert torch.all(same <= eps * torch.cdist(x.double(), x.double()).amax((1, 2)) + 1e-12)


def test_pairwise_emd_symmetry_and_values() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.rand(4, 5, 3, generator=gen)
    b = torch.rand(3, 5, 3, generator=gen)
    got = pairwise_emd(a, b, exact=True)
    expected = torch.tensor(
        [[brute_emd(a[i], b[j]) for j in range(3)] for i in range(4)], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    sym = pairwise_emd(a, exact=True)
    assert torch.equal(sym, sym.T) and torch.all(sym.diagonal() == 0)
    torch.testing.assert_close(sym[0, 1], torch.tensor(brute_emd(a[0], a[1]), dtype=torch.float64))


def test_mmd_cov_and_1nna_on_constructed_matrices() -> None:
    # refs r0, r1, r2; samples s0, s1: both samples are nearest to r0.
    m_rs = torch.tensor([[0.1, 0.2], [0.9, 0.8], [0.5, 0.7]], dtype=torch.float64)
    mmd, cov = mmd_cov(m_rs)
    assert mmd == pytest.approx((0.1 + 0.8 + 0.5) / 3)
    assert cov == pytest.approx(100.0 / 3)
    m_rr = torch.tensor([[0, 0.05, 1], [0.05, 0, 1], [1, 1, 0]], dtype=torch.float64)
    m_ss = torch.tensor([[0, 0.3], [0.3, 0]], dtype=torch.float64)
    # r0: same 0.05 < other 0.1 -> hit; r1: 0.05 < 0.8 hit; r2: 1 > 0.5 miss;
    # s0: same 0.3 > other 0.1 miss; s1: 0.3 > 0.2 miss -> 2 / 5
    assert one_nna(m_rr, m_ss, m_rs) == pytest.approx(40.0)
    # a tie counts half
    assert one_nna(
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        torch.tensor([[1.0, 2.0], [2.0, 1.0]]),
    ) == pytest.approx(50.0)


def test_point_cloud_metrics_identical_sets() -> None:
    gen = torch.Generator().manual_seed(6)
    refs = torch.rand(8, 32, 3, generator=gen)
    out = point_cloud_metrics(refs.clone(), refs, emd_method="exact")
    assert out["MMD-CD"] == 0 and out["MMD-EMD"] == pytest.approx(0.0, abs=1e-15)
    assert out["COV-CD"] == 100.0 and out["COV-EMD"] == 100.0
    # every item's nearest other item is its twin in the other set: all misclassified
    assert out["1-NNA-CD"] == 0.0 and out["1-NNA-EMD"] == 0.0
    assert out["EMD-method"] == emd_method_name(True)


def test_point_cloud_metrics_disjoint_sets_and_mode_collapse() -> None:
    gen = torch.Generator().manual_seed(7)
    refs = torch.rand(10, 32, 3, generator=gen)
    far = torch.rand(10, 32, 3, generator=gen) + 100.0
    out = point_cloud_metrics(far, refs, emd_method="auction")
    assert out["1-NNA-CD"] == 100.0 and out["1-NNA-EMD"] == 100.0
    assert "auction" in str(out["EMD-method"])
    # Mode collapse: every sample is a copy of refs[3] -> one covered reference.
    collapsed = refs[3:4].expand(10, -1, -1).clone()
    out = point_cloud_metrics(collapsed, refs, emd_method="exact")
    assert out["COV-CD"] == pytest.approx(10.0) and out["COV-EMD"] == pytest.approx(10.0)
    expected_mmd = float(pairwise_chamfer(refs, refs[3:4]).mean())
    assert out["MMD-CD"] == pytest.approx(expected_mmd, rel=1e-12)
    skipped = point_cloud_metrics(collapsed, refs, emd_method="none")
    assert "MMD-EMD" not in skipped and skipped["EMD-method"] == "not computed"


def test_normalize_point_clouds() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.rand(3, 50, 3, generator=gen, dtype=torch.float64) * torch.tensor([4.0, 1.0, 2.0])
    x = x + 7.0
    b = normalize_point_clouds(x, "bbox")
    extent = b.amax(1) - b.amin(1)
    torch.testing.assert_close(extent.amax(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(b.amax(1) + b.amin(1), torch.zeros(3, 3, dtype=torch.float64))
    s = normalize_point_clouds(x, "unit_sphere")
    torch.testing.assert_close(s.norm(dim=-1).amax(1), torch.ones(3, dtype=torch.float64))


def test_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="NaN"):
        chamfer_distance(torch.full((1, 4, 3), float("nan")), torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="same batch"):
        chamfer_distance(torch.zeros(2, 4, 3), torch.zeros(3, 4, 3))
    with pytest.raises(ValueError, match="backend"):
        chamfer_distance(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), backend="faiss")


def _write_ply(path: Path, pts: np.ndarray, fmt: str) -> None:
    header = (
        f"ply\nformat {fmt} 1.0\ncomment test\nelement vertex {len(pts)}\n"
        "property float x\nproperty float y\nproperty float z\nproperty uchar red\n"
        "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
    )
    with path.open("wb") as fh:
        fh.write(header.encode())
        if fmt == "ascii":
            for p in pts:
                fh.write(f"{p[0]} {p[1]} {p[2]} 7\n".encode())
        else:
            dt = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")])
            rec = np.zeros(len(pts), dtype=dt)
            rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
            fh.write(rec.tobytes())


def test_ply_reading_and_cloud_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    pts = rng.random((20, 3)).astype(np.float32)
    _write_ply(tmp_path / "a.ply", pts, "ascii")
    _write_ply(tmp_path / "b.ply", pts[::-1].copy(), "binary_little_endian")
    np.testing.assert_allclose(read_ply(tmp_path / "a.ply"), pts, rtol=1e-6)
    np.testing.assert_array_equal(read_ply(tmp_path / "b.ply"), pts[::-1].astype(np.float64))
    clouds = load_point_clouds(tmp_path)
    assert clouds.shape == (2, 20, 3)
    np.save(tmp_path / "c.npy", rng.random((2, 21, 3)))
    with pytest.raises(ValueError, match="differ"):
        load_point_clouds(tmp_path)


def test_auto_emd_never_starts_hours_of_cpu_work() -> None:
    gen = torch.Generator().manual_seed(10)
    small = point_cloud_metrics(
        torch.rand(3, 40, 3, generator=gen), torch.rand(3, 40, 3, generator=gen)
    )
    assert "exact" in str(small["EMD-method"]) and "MMD-EMD" in small
    big = point_cloud_metrics(
        torch.rand(3, 600, 3, generator=gen), torch.rand(3, 600, 3, generator=gen)
    )
    assert str(big["EMD-method"]).startswith("not computed") and "MMD-EMD" not in big
    assert "MMD-CD" in big
