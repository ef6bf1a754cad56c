"""lDDT and TM-score on known cases: identical, rigidly moved, perturbed and hinged chains."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from inrflow.metrics import kabsch, lddt, tm_score
from inrflow.metrics.protein import tm_d0

pytestmark = pytest.mark.usefixtures("one_thread")


def chain(n: int, seed: int = 0) -> torch.Tensor:
    """A random-walk Cα trace with 3.8 Å steps."""
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return (steps / steps.norm(dim=1, keepdim=True) * 3.8).cumsum(0)


def rotation(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def test_identical_and_rigidly_moved_chains_score_one() -> None:
    x = chain(80)
    assert lddt(x, x) == 1.0 and tm_score(x, x) == pytest.approx(1.0, abs=1e-12)
    moved = x @ rotation(1).T + torch.tensor([12.0, -4.0, 30.0], dtype=torch.float64)
    assert lddt(moved, x) == pytest.approx(1.0, abs=1e-12)
    assert tm_score(moved, x) == pytest.approx(1.0, abs=1e-12)
    # a mirror image is not a rigid motion: lDDT cannot tell (distances kept), TM-score can
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert lddt(mirrored, x) == pytest.approx(1.0, abs=1e-12)
    assert tm_score(mirrored, x) < 0.9


def test_kabsch_recovers_the_motion() -> None:
    x = chain(30, seed=2)
    r, t = rotation(3), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    rot, tr = kabsch(x, x @ r.T + t)
    torch.testing.assert_close(rot, r, rtol=0, atol=1e-10)
    torch.testing.assert_close(tr, t, rtol=0, atol=1e-9)
    assert torch.linalg.det(rot) == pytest.approx(1.0)


def test_lddt_hand_computed_case() -> None:
    # Four points on a line 1 Å apart; move the last one by 1.5 Å along the line.
    true = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=torch.float64)
    pred = true.clone()
    pred[3, 0] = 4.5
    # Ordered pairs (i != j): 12, all within 15 Å. Pairs with point 3 (6 ordered) have error
    # 1.5: preserved at thresholds 2 and 4 (2 of 4 -> 0.5); the other 6 pairs score 1.
    assert lddt(pred, true) == pytest.approx((6 * 1.0 + 6 * 0.5) / 12)
    per_res = lddt(pred, true, per_residue=True)
    torch.testing.assert_close(
        per_res, torch.tensor([5 / 6, 5 / 6, 5 / 6, 0.5], dtype=torch.float64)
    )
    # the cut-off: pairs farther than 15 Å in the true structure are not scored
    far = true * 10.0  # 10 Å spacing: only neighbours (10 Å) are inside 15 Å
    assert lddt(far, far, cutoff=15.0) == 1.0


def test_perturbation_lowers_both_scores_monotonically() -> None:
    x = chain(120, seed=4)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ld = [lddt(x + s * noise, x) for s in (0.0, 0.3, 1.0, 3.0)]
    tm = [tm_score(x + s * noise, x) for s in (0.0, 0.3, 1.0, 3.0)]
    assert ld[0] == 1.0 and all(a > b for a, b in itertools.pairwise(ld))
    assert tm[0] == pytest.approx(1.0) and all(a > b for a, b in itertools.pairwise(tm))


def test_tm_score_finds_the_best_superposition_of_a_hinged_chain() -> None:
    # The last 40 of 100 residues are shifted 50 Å: the best superposition aligns the first 60
    # exactly (a global Kabsch fit of all 100 does much worse).
    x = chain(100, seed=6)
    y = x.clone()
    y[60:] += torch.tensor([50.0, 0.0, 0.0], dtype=torch.float64)
    d0 = tm_d0(100)
    optimum = (60 + 40 / (1 + (50 / d0) ** 2)) / 100
    got = tm_score(y, x)
    assert got == pytest.approx(optimum, abs=1e-4)
    rot, tr = kabsch(y, x)
    dist = (y @ rot.T + tr - x).norm(dim=-1)
    global_fit = float((1 / (1 + (dist / d0) ** 2)).mean())
    assert global_fit < optimum - 0.1


def test_tm_d0_and_validation() -> None:
    assert tm_d0(10) == 0.5
    assert tm_d0(100) == pytest.approx(1.24 * 85 ** (1 / 3) - 1.8)
    assert math.isclose(tm_d0(22), max(0.5, 1.24 * 7 ** (1 / 3) - 1.8))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        lddt(torch.zeros(5, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        tm_score(torch.full((5, 3), float("nan")), torch.zeros(5, 3))


def _independent_tm_maximum(pred, true, refine: int = 12) -> float:
    """max over rigid motions of the TM objective, found without inrflow's search: scipy's
    weighted alignment of contiguous fragments (every offset, lengths 4..L) as starts, the best
    ``refine`` of them refined by Nelder-Mead over (rotation vector, translation)."""
    import numpy as np
    from scipy.optimize import minimize
    from scipy.spatial.transform import Rotation

    n = len(true)
    d0 = tm_d0(n)

    def tm(x):
        d = np.linalg.norm(pred @ Rotation.from_rotvec(x[:3]).as_matrix().T + x[3:] - true, axis=1)
        return float(np.mean(1 / (1 + (d / d0) ** 2)))

    starts = []
    for length in sorted({4, 8, 16, 32, n // 2, n}):
        for s in range(n - length + 1):
            a, b = true[s : s + length], pred[s : s + length]
            rot, _ = Rotation.align_vectors(a - a.mean(0), b - b.mean(0))
            x = np.concatenate([rot.as_rotvec(), a.mean(0) - rot.apply(b.mean(0))])
            starts.append((tm(x), x))
    starts.sort(key=lambda z: -z[0])
    opts = dict(xatol=1e-8, fatol=1e-12, maxiter=3000, maxfev=6000)
    return max(
        -minimize(lambda z: -tm(z), x, method="Nelder-Mead", options=opts).fun
        for _, x in starts[:refine]
    )


@pytest.mark.parametrize(
    ("pred", "true"), [("1pdoA", "1mr1D"), ("1eteA", "1dx5I"), ("1y1lA", "1or4A")]
)
def test_tm_score_of_different_chains_is_close_to_the_true_maximum(pred, true) -> None:
    """Dissimilar structures (TM ~0.15-0.2), where a thin seed search under-reported by up to
    0.02: the program's search (every offset, the d0_search + 1 refinement cut-off) comes within
    0.004 of an independent maximiser, and never above it (it scores real superpositions)."""
    pytest.importorskip("Bio.PDB")
    pytest.importorskip("scipy")
    from inrflow.data import proteins

    try:
        files = {Path(f).name.split(".")[0]: f for f in proteins.bundled_protein_files()}
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"the bundled protein set is not installed: {exc}")

    def ca(name: str):
        c = proteins.parse_structure(files[name])
        return c.xyz[c.ca[c.ca >= 0]]

    a, b = ca(pred), ca(true)
    n = min(len(a), len(b), 90)
    a, b = a[:n], b[:n]
    best = _independent_tm_maximum(a, b)
    got = tm_score(a, b)
    assert best - 0.004 <= got <= best + 1e-9, (got, best)
