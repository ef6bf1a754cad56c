"""Recognising 3-D shapes by class, from rotation-invariant descriptors of the point cloud.

A generated point cloud is only useful if it is the shape it was asked for. Chamfer nearest
neighbours cannot tell that for randomly oriented shapes (two orientations of one torus are far
apart in Chamfer distance), so the classifier here sees descriptors that do not change under
rotation, reflection or point order:

- the D2 shape distribution (Osada et al. 2002): a histogram of the distances between pairs of
  points, relative to the cloud's RMS radius;
- a histogram of the distances to the centroid, relative to the same radius;
- the covariance eigenvalues (sorted, summing to one): elongation and flatness;
- local flatness: at every point, the smallest eigenvalue fraction of its ``k`` nearest
  neighbours' covariance (near 0 on a surface, ~1/3 in a blob), as a histogram.

A multinomial logistic regression on the standardised descriptors is the classifier: small,
deterministic, and trained in a second or two on a few hundred real shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from inrflow.metrics._utils import ArrayLike, as_tensor

__all__ = ["ShapeClassifier", "score_class_samples", "shape_descriptors"]

D2_BINS = 24
RADIAL_BINS = 16
FLAT_BINS = 8
D2_PAIRS = 4096
LOCAL_K = 10


def _as_clouds(x: ArrayLike) -> np.ndarray:
    """``[B, N, 3]`` float64 numpy clouds, with a clear error for anything else."""
    t = as_tensor(x)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[-1] != 3 or t.shape[1] < LOCAL_K + 1:
        raise ValueError(
            f"expected point clouds [B, N, 3] with N > {LOCAL_K}, got {tuple(t.shape)}"
        )
    a = t.detach().double().cpu().numpy()
    if not np.isfinite(a).all():
        raise ValueError("point clouds contain NaN or infinite coordinates")
    return a


def _hist(x: np.ndarray, bins: int, high: float) -> np.ndarray:
    """Normalised histogram on ``[0, high]`` (values beyond fall in the last bin)."""
    h = np.bincount(np.minimum((x / high * bins).astype(np.int64), bins - 1), minlength=bins)
    return h / max(len(x), 1)


def _one(cloud: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The descriptor vector of one ``[N, 3]`` cloud."""
    centred = cloud - cloud.mean(0)
    radius = max(float(np.sqrt((centred**2).sum(1).mean())), 1e-9)
    c = centred / radius
    n = len(c)
    i, j = rng.integers(0, n, size=(2, D2_PAIRS))
    keep = i != j
    d2 = np.linalg.norm(c[i[keep]] - c[j[keep]], axis=1)
    radial = np.linalg.norm(c, axis=1)
    eig = np.sort(np.linalg.eigvalsh(np.cov(c.T)))[::-1]
    eig = eig / max(eig.sum(), 1e-12)
    sq = (c**2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * c @ c.T
    nbr = np.argpartition(dist, LOCAL_K, axis=1)[:, : LOCAL_K + 1]  # includes the point itself
    patches = c[nbr] - c[nbr].mean(1, keepdims=True)
    local = np.linalg.eigvalsh(np.einsum("nki,nkj->nij", patches, patches))  # ascending
    flat = local[:, 0] / np.maximum(local.sum(1), 1e-12)
    return np.concatenate(
        [
            _hist(d2, D2_BINS, 4.0),
            _hist(radial, RADIAL_BINS, 2.5),
            eig,
            _hist(flat, FLAT_BINS, 1.0 / 3.0),
            [radial.std(), d2.mean(), d2.std()],
        ]
    )


def shape_descriptors(clouds: ArrayLike, seed: int = 0) -> np.ndarray:
    """``[B, F]`` rotation-, reflection-, translation-, scale- and order-invariant descriptors
    of ``[B, N, 3]`` clouds (see the module docstring). ``seed`` fixes the D2 point pairs, so a
    cloud always gets the same descriptor."""
    a = _as_clouds(clouds)
    return np.stack([_one(c, np.random.default_rng(seed)) for c in a])


class ShapeClassifier:
    """Logistic regression on :func:`shape_descriptors`, trained on real clouds.

    ``ShapeClassifier(class_names).fit(clouds, labels)``; then :meth:`predict`,
    :meth:`accuracy` and :meth:`per_class_accuracy` on any clouds with the same point count
    (other counts work too; the histograms are normalised).
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        if len(class_names) < 2:
            raise ValueError("a classifier needs at least two classes")
        self.class_names = tuple(class_names)
        self._model = None

    def fit(self, clouds: ArrayLike, labels: ArrayLike) -> ShapeClassifier:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = shape_descriptors(clouds)
        y = self._labels(labels, len(x))
        if len(np.unique(y)) != len(self.class_names):
            raise ValueError("every class needs at least one training cloud")
        self._model = make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=5000))
        self._model.fit(x, y)
        return self

    def _labels(self, labels: ArrayLike, n: int) -> np.ndarray:
        y = np.asarray(as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
        if len(y) != n:
            raise ValueError(f"{len(y)} labels for {n} clouds")
        if len(y) and (y.min() < 0 or y.max() >= len(self.class_names)):
            raise ValueError(f"labels must be in [0, {len(self.class_names)})")
        return y

    def predict(self, clouds: ArrayLike) -> np.ndarray:
        """``[B]`` predicted class indices."""
        if self._model is None:
            raise RuntimeError("ShapeClassifier.predict before fit")
        return self._model.predict(shape_descriptors(clouds)).astype(np.int64)

    def accuracy(self, clouds: ArrayLike, labels: ArrayLike) -> float:
        """Fraction of ``clouds`` predicted as their ``labels``."""
        pred = self.predict(clouds)
        return float((pred == self._labels(labels, len(pred))).mean())

    def per_class_accuracy(self, clouds: ArrayLike, labels: ArrayLike) -> dict[str, float]:
        """Accuracy over the clouds of each class present in ``labels``, by class name."""
        pred = self.predict(clouds)
        y = self._labels(labels, len(pred))
        return {
            self.class_names[k]: float((pred[y == k] == k).mean())
            for k in range(len(self.class_names))
            if (y == k).any()
        }


def score_class_samples(
    samples: ArrayLike,
    labels: ArrayLike,
    refs: ArrayLike,
    ref_labels: ArrayLike,
    classifier: ShapeClassifier,
) -> dict[str, float]:
    """Scores of class-conditional ``samples`` ``[S, N, 3]`` asked for ``labels`` ``[S]``,
    against real held-out ``refs`` ``[R, N', 3]`` of ``ref_labels``.

    - ``recognition``: fraction of samples ``classifier`` labels as the class asked for;
      ``recognition_min`` its lowest per-class value, ``recognition/<class>`` each class's.
    - ``1-NNA-CD/<class>``: the Chamfer 1-NN two-sample accuracy (percent, ideal 50) of each
      class's samples against its refs (how indistinguishable the shapes are, class by class);
      ``1-NNA-CD_mean`` their mean.
    - ``MMD-CD``, ``COV-CD``, ``1-NNA-CD``: all samples against all refs, class-blind.
    """
    from inrflow.metrics.pointcloud import mmd_cov, one_nna, pairwise_chamfer

    s, r = as_tensor(samples).double().cpu(), as_tensor(refs).double().cpu()
    y = classifier._labels(labels, len(s))
    yr = classifier._labels(ref_labels, len(r))
    out: dict[str, float] = {}
    per = classifier.per_class_accuracy(s, y)
    out["recognition"] = classifier.accuracy(s, y)
    out["recognition_min"] = min(per.values())
    out.update({f"recognition/{k}": v for k, v in per.items()})
    m_rs = pairwise_chamfer(r, s)
    m_rr, m_ss = pairwise_chamfer(r), pairwise_chamfer(s)
    nna = {}
    for k, name in enumerate(classifier.class_names):
        si, ri = np.flatnonzero(y == k), np.flatnonzero(yr == k)
        if len(si) < 2 or len(ri) < 2:
            continue
        si_t, ri_t = torch.from_numpy(si), torch.from_numpy(ri)
        nna[name] = one_nna(m_rr[ri_t][:, ri_t], m_ss[si_t][:, si_t], m_rs[ri_t][:, si_t])
    out.update({f"1-NNA-CD/{k}": v for k, v in nna.items()})
    if nna:
        out["1-NNA-CD_mean"] = float(np.mean(list(nna.values())))
    out["MMD-CD"], out["COV-CD"] = mmd_cov(m_rs)
    out["1-NNA-CD"] = one_nna(m_rr, m_ss, m_rs)
    return out
