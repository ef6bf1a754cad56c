"""Distribution distances on feature vectors: Fréchet distance, KID, precision/recall, IS.

All statistics are accumulated and compared in float64: FID-style numbers are differences of
large traces, and float32 covariances lose the digits that separate good models. The feature
extractor is pluggable (:mod:`inrflow.metrics.inception`, :mod:`inrflow.metrics.digits`); these
functions only see ``[N, D]`` features (numpy arrays or tensors, any device).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from inrflow.metrics._utils import ArrayLike, as_numpy64, as_tensor, chunks

__all__ = [
    "FeatureStats",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "kid",
    "precision_recall",
]


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix (eigenvalues clipped at 0 against round-off)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` in float64. The trace term is
    computed as ``sum sqrt(eig(S1^(1/2) S2 S1^(1/2)))``: that matrix is symmetric PSD, so unlike
    ``sqrtm(S1 @ S2)`` it needs no complex arithmetic and stays real for singular covariances
    (fewer samples than feature dimensions). It is not exact there: the square roots of the
    eigenvalues that should be 0 turn their round-off (~1e-16 relative) into ~1e-8, so with
    singular covariances the result carries a relative error of a few 1e-7 (measured: 2e-7 to
    5e-7 for N(0, S) against N(0, 1.7^2 S), exact value 0.49 tr(S), with d = 64..2048 from
    10..100 samples). Negative round-off results are clipped to 0.
    """
    m1, m2 = as_numpy64(mu1).reshape(-1), as_numpy64(mu2).reshape(-1)
    s1, s2 = np.atleast_2d(as_numpy64(sigma1)), np.atleast_2d(as_numpy64(sigma2))
    d = m1.shape[0]
    if m2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes do not match: mu1 {m1.shape}, sigma1 {s1.shape}, "
            f"mu2 {m2.shape}, sigma2 {s2.shape}"
        )
    for name, arr in (("mu1", m1), ("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"frechet_distance: {name} has NaN or infinite entries")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


class FeatureStats:
    """Running float64 mean and covariance of feature batches (optionally keeping the features).

    Sums are taken around a shift (the first batch's mean), which keeps the one-pass covariance
    accurate when features have a large common offset. ``keep=True`` also stores the features
    (float32, on the CPU) for KID and precision/recall, which need the samples themselves.
    """

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.n = 0
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        self._kept: list[torch.Tensor] = []

    def update(self, features: ArrayLike) -> None:
        f = as_tensor(features).reshape(len(features), -1)
        if f.shape[0] == 0:
            return
        f64 = f.to(torch.float64)
        if not torch.isfinite(f64).all():
            raise ValueError("FeatureStats.update: features contain NaN or infinite values")
        if self._shift is None:
            self._shift = f64.mean(0)
            d = f64.shape[1]
            self._sum = torch.zeros(d, dtype=torch.float64, device=f64.device)
            self._outer = torch.zeros(d, d, dtype=torch.float64, device=f64.device)
        elif f64.shape[1] != self._shift.shape[0]:
            raise ValueError(
                f"FeatureStats.update: feature width {f64.shape[1]} != {self._shift.shape[0]}"
            )
        assert self._sum is not None and self._outer is not None
        c = f64.to(self._shift.device) - self._shift
        self._sum += c.sum(0)
        self._outer += c.T @ c
        self.n += f64.shape[0]
        if self.keep:
            self._kept.append(f.detach().to("cpu", torch.float32))

    @property
    def dim(self) -> int:
        return 0 if self._shift is None else int(self._shift.shape[0])

    def mean(self) -> np.ndarray:
        if self.n == 0 or self._shift is None or self._sum is None:
            raise ValueError("FeatureStats: no features were added")
        return (self._shift + self._sum / self.n).cpu().numpy()

    def cov(self) -> np.ndarray:
        """Unbiased sample covariance (``n - 1`` in the denominator), as numpy's ``np.cov``."""
        if self.n < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"FeatureStats: a covariance needs >= 2 features, have {self.n}")
        m = self._sum / self.n
        cov = (self._outer - self.n * torch.outer(m, m)) / (self.n - 1)
        return cov.cpu().numpy()

    def features(self) -> torch.Tensor:
        if not self.keep:
            raise ValueError("FeatureStats was created with keep=False; features were not kept")
        if not self._kept:
            return torch.zeros(0, self.dim)
        return torch.cat(self._kept)


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, covariance)`` of ``[N, D]`` features in float64 (covariance with ``N - 1``)."""
    stats = FeatureStats()
    stats.update(features)
    return stats.mean(), stats.cov()


def kid(
    features1: ArrayLike,
    features2: ArrayLike,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with a cubic kernel.

    ``k(x, y) = (x·y / D + coef0) ** degree``. Each of ``subsets`` rounds draws
    ``m = min(subset_size, N1, N2)`` features from each set without replacement and computes the
    unbiased estimate (kernel diagonals excluded), so its expectation is 0 for equal
    distributions and it can be negative. Returns ``(mean, std)`` over the rounds, in float64.
    """
    x = as_tensor(features1, torch.float64, device)
    y = as_tensor(features2, torch.float64, device)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: need [N, D] features of equal D, got {x.shape} and {y.shape}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("kid: each set needs at least 2 features")
    gen = torch.Generator().manual_seed(seed)
    idx_x = torch.stack([torch.randperm(x.shape[0], generator=gen)[:m] for _ in range(subsets)])
    idx_y = torch.stack([torch.randperm(y.shape[0], generator=gen)[:m] for _ in range(subsets)])
    per_round = 3 * m * m * 8  # three float64 kernel matrices
    values = []
    for sl in chunks(subsets, max(1, (256 << 20) // per_round)):  # rounds batched, 256 MiB max
        xs = x[idx_x[sl].to(x.device)]  # [s, m, D]
        ys = y[idx_y[sl].to(y.device)]
        d = x.shape[1]
        kxx = (xs @ xs.transpose(1, 2) / d + coef0) ** degree
        kyy = (ys @ ys.transpose(1, 2) / d + coef0) ** degree
        kxy = (xs @ ys.transpose(1, 2) / d + coef0) ** degree
        off = m * (m - 1)
        diag_xx = kxx.diagonal(dim1=1, dim2=2).sum(-1)
        diag_yy = kyy.diagonal(dim1=1, dim2=2).sum(-1)
        mmd = (
            (kxx.sum((1, 2)) - diag_xx) / off
            + (kyy.sum((1, 2)) - diag_yy) / off
            - 2.0 * kxy.mean((1, 2))
        )
        values.extend(mmd.tolist())
    arr = np.asarray(values)
    return float(arr.mean()), float(arr.std())


def _kth_nn_radius(feats: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of every row to its k-th nearest other row (the row itself excluded)."""
    n = feats.shape[0]
    if n <= k:
        raise ValueError(f"precision_recall: need more than k={k} features per set, have {n}")
    radii = torch.empty(n, dtype=feats.dtype, device=feats.device)
    for sl in chunks(n, chunk):
        d = torch.cdist(feats[sl], feats)
        # k + 1 smallest: the row itself (distance 0) is one of them.
        radii[sl] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _in_manifold(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, chunk: int
) -> torch.Tensor:
    """For every query, whether it lies in some support point's k-NN ball."""
    inside = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
    for sl in chunks(queries.shape[0], chunk):
        d = torch.cdist(queries[sl], support)
        inside[sl] = (d <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    k: int = 3,
    chunk: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    Each set's manifold is the union of balls around its features with radius the distance to
    the k-th nearest neighbour in the same set. Precision: fraction of fake features inside the
    real manifold; recall: fraction of real features inside the fake manifold. Distances in
    float64, computed ``chunk`` rows at a time (memory O(chunk * N)).
    """
    r = as_tensor(real, torch.float64, device)
    f = as_tensor(fake, torch.float64, device if device is not None else r.device)
    if r.dim() != 2 or f.dim() != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"precision_recall: need [N, D] features, got {r.shape} and {f.shape}")
    f = f.to(r.device)
    real_radii = _kth_nn_radius(r, k, chunk)
    fake_radii = _kth_nn_radius(f, k, chunk)
    precision = _in_manifold(f, r, real_radii, chunk).double().mean()
    recall = _in_manifold(r, f, fake_radii, chunk).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def inception_score(logits: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` from classifier logits ``[N, C]``.

    Computed on ``splits`` consecutive parts (Salimans et al. 2016); returns ``(mean, std)``.
    Only meaningful with the real Inception weights: a random network's class posterior says
    nothing about image quality (:func:`inrflow.metrics.compute_image_metrics` refuses it).
    """
    z = as_tensor(logits, torch.float64)
    if z.dim() != 2 or z.shape[0] < splits:
        raise ValueError(f"inception_score: need [N >= splits, C] logits, got {tuple(z.shape)}")
    logp = torch.log_softmax(z, dim=1)
    scores = []
    for part in torch.tensor_split(logp, splits):
        logpy = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (part.exp() * (part - logpy)).sum(1).mean()
        scores.append(float(kl.exp()))
    arr = np.asarray(scores)
    return float(arr.mean()), float(arr.std())
